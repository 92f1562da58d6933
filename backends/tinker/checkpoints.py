"""Checkpoint management (capability ``checkpoint_management``) through the SDK's ``RestClient``.

``RemoteCheckpointStore`` has the methods ``tinker_std.client.rest.RestClient`` calls on a
``CheckpointStore`` (from a worker thread): list runs, list a run's checkpoints, one page of every
run's checkpoints, delete one."""

from __future__ import annotations

from typing import Any

from tinker_std.types import Checkpoint, ParsedCheckpointTinkerPath, TrainingRun

from .convert import checkpoint_from_sdk, training_run_from_sdk
from .errors import to_std_error

__all__ = ["RemoteCheckpointStore"]

_PAGE = 100


class RemoteCheckpointStore:
    """The server's runs and checkpoints, as the SDK's ``RestClient`` reports them. Blocking calls:
    use them from a worker thread, not from an event loop."""

    def __init__(self, rest: Any) -> None:
        self.rest = rest

    def _wait(self, future: Any) -> Any:
        try:
            return future.result()
        except Exception as exc:
            mapped = to_std_error(exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    def list_training_runs(self) -> list[TrainingRun]:
        runs: list[TrainingRun] = []
        while True:
            page = self._wait(self.rest.list_training_runs(limit=_PAGE, offset=len(runs)))
            runs += [training_run_from_sdk(run) for run in page.training_runs]
            if len(page.training_runs) < _PAGE:
                return runs

    def list_checkpoints(self, training_run_id: str) -> list[Checkpoint]:
        """Checkpoints of one run, oldest first (as ``CheckpointStore.list_checkpoints``)."""
        listed = self._wait(self.rest.list_checkpoints(training_run_id))
        return sorted((checkpoint_from_sdk(c) for c in listed.checkpoints), key=lambda c: c.time)

    def user_checkpoints_page(self, limit: int, offset: int) -> tuple[list[Checkpoint], int]:
        """One page of every run's checkpoints, oldest first, and how many there are: the server
        pages them itself (one request, where listing each run would take one request per run)."""
        page = self._wait(self.rest.list_user_checkpoints(limit=limit, offset=offset))
        found = [checkpoint_from_sdk(c) for c in page.checkpoints]
        return found, page.cursor.total_count if page.cursor is not None else offset + len(found)

    def delete(self, path: ParsedCheckpointTinkerPath) -> None:
        """Delete one checkpoint; ``NotFoundError`` if the server has none at ``path``."""
        self._wait(self.rest.delete_checkpoint_from_tinker_path(path.tinker_path))
