"""``RestClient``: list and delete checkpoints of a backend's local checkpoint store (spec CKPT-11)."""

from __future__ import annotations

import asyncio

from ..checkpoints import CheckpointStore
from ..errors import BadRequestError
from ..futures import APIFuture
from ..types import Checkpoint, ParsedCheckpointTinkerPath, TrainingRun
from .runtime import EventLoopThread

__all__ = ["RestClient"]


class RestClient:
    """Checkpoint management with the tinker SDK's method names; every call returns a future."""

    def __init__(self, store: CheckpointStore, runtime: EventLoopThread) -> None:
        self.store = store
        self._runtime = runtime

    def _later(self, fn: object, *args: object) -> APIFuture[object]:
        async def run() -> object:
            return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]

        return self._runtime.submit(run())

    def list_training_runs(self) -> APIFuture[list[TrainingRun]]:
        return self._later(self.store.list_training_runs)  # type: ignore[return-value]

    def list_checkpoints(self, training_run_id: str) -> APIFuture[list[Checkpoint]]:
        return self._later(self.store.list_checkpoints, training_run_id)  # type: ignore[return-value]

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        path = _parse(tinker_path)
        return self._later(self.store.delete, path)  # type: ignore[return-value]

    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> APIFuture[None]:
        return self.delete_checkpoint_from_tinker_path(f"tinker://{training_run_id}/{checkpoint_id}")


def _parse(tinker_path: str) -> ParsedCheckpointTinkerPath:
    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
    except ValueError as exc:
        raise BadRequestError("path", str(exc)) from None
