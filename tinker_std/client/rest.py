"""``RestClient``: checkpoint management over a backend's local checkpoint store (spec CKPT-11),
with the tinker SDK 0.38 method names, arguments and response types (cursors included)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from ..checkpoints import CheckpointStore
from ..errors import BadRequestError, NotFoundError
from ..futures import APIFuture
from ..types import (
    CheckpointsListResponse,
    Cursor,
    ParsedCheckpointTinkerPath,
    TrainingRun,
    TrainingRunsResponse,
)
from .runtime import EventLoopThread

__all__ = ["RestClient"]

T = TypeVar("T")
ACCESS_SCOPES = ("owned", "accessible")


class RestClient:
    """Checkpoint management with the tinker SDK's method names; every call returns a future.

    In process there is one user, so ``access_scope="accessible"`` lists what ``"owned"`` lists;
    projects do not exist (a ``project_id`` is a ``BadRequestError`` naming it, SDK-1)."""

    def __init__(self, store: CheckpointStore, runtime: EventLoopThread) -> None:
        self.store = store
        self._runtime = runtime

    def _later(self, fn: Callable[..., T], *args: Any) -> APIFuture[T]:
        async def run() -> T:
            return await asyncio.to_thread(fn, *args)

        return self._runtime.submit(run())

    # -- training runs ------------------------------------------------------------------------

    def list_training_runs(
        self, limit: int = 20, offset: int = 0, access_scope: str = "owned", project_id: str | None = None
    ) -> APIFuture[TrainingRunsResponse]:
        """One page of the runs that have checkpoints, oldest first, with a ``Cursor``."""
        _check_page(limit, offset)
        _check_scope(access_scope, project_id)

        def page() -> TrainingRunsResponse:
            runs = self.store.list_training_runs()
            # only this page's runs get their checkpoints listed: a store behind a server lists one
            # run per request, so completing every run made each page cost the whole listing
            return TrainingRunsResponse(
                training_runs=[self._run(r) for r in runs[offset : offset + limit]],
                cursor=Cursor(offset=offset, limit=limit, total_count=len(runs)),
            )

        return self._later(page)

    def get_training_run(self, training_run_id: str, access_scope: str = "owned") -> APIFuture[TrainingRun]:
        _check_scope(access_scope, None)

        def find() -> TrainingRun:
            for run in self.store.list_training_runs():
                if run.training_run_id == training_run_id:
                    return self._run(run)
            raise NotFoundError(f"no training run {training_run_id!r} with checkpoints in {self.store.root}")

        return self._later(find)

    def get_training_run_by_tinker_path(self, tinker_path: str, access_scope: str = "owned") -> APIFuture[TrainingRun]:
        return self.get_training_run(_parse(tinker_path).training_run_id, access_scope)

    def _run(self, run: TrainingRun) -> TrainingRun:
        checkpoints = self.store.list_checkpoints(run.training_run_id)
        last = {kind: [c for c in checkpoints if c.checkpoint_type == kind] for kind in ("training", "sampler")}
        return run.model_copy(
            update={
                "last_request_time": run.last_checkpoint_time,
                "last_checkpoint": last["training"][-1] if last["training"] else None,
                "last_sampler_checkpoint": last["sampler"][-1] if last["sampler"] else None,
            }
        )

    # -- checkpoints --------------------------------------------------------------------------

    def list_checkpoints(self, training_run_id: str) -> APIFuture[CheckpointsListResponse]:
        """Every checkpoint of one run, oldest first (no cursor, as in the SDK)."""
        return self._later(lambda: CheckpointsListResponse(checkpoints=self.store.list_checkpoints(training_run_id)))

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> APIFuture[CheckpointsListResponse]:
        """One page of the checkpoints of every run, oldest first, with a ``Cursor``: the store's
        ``user_checkpoints_page`` (a store behind a server pages itself, in one request)."""
        _check_page(limit, offset)

        def page() -> CheckpointsListResponse:
            checkpoints, total = self.store.user_checkpoints_page(limit, offset)
            return CheckpointsListResponse(
                checkpoints=checkpoints, cursor=Cursor(offset=offset, limit=limit, total_count=total)
            )

        return self._later(page)

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        path = _parse(tinker_path)
        return self._later(self.store.delete, path)

    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> APIFuture[None]:
        return self.delete_checkpoint_from_tinker_path(f"tinker://{training_run_id}/{checkpoint_id}")

    # -- async twins --------------------------------------------------------------------------

    async def list_training_runs_async(self, limit: int = 20, offset: int = 0, **kwargs: Any) -> TrainingRunsResponse:
        return await self.list_training_runs(limit, offset, **kwargs)

    async def get_training_run_async(self, training_run_id: str, access_scope: str = "owned") -> TrainingRun:
        return await self.get_training_run(training_run_id, access_scope)

    async def get_training_run_by_tinker_path_async(self, tinker_path: str, access_scope: str = "owned") -> TrainingRun:
        return await self.get_training_run_by_tinker_path(tinker_path, access_scope)

    async def list_checkpoints_async(self, training_run_id: str) -> CheckpointsListResponse:
        return await self.list_checkpoints(training_run_id)

    async def list_user_checkpoints_async(self, limit: int = 100, offset: int = 0) -> CheckpointsListResponse:
        return await self.list_user_checkpoints(limit, offset)

    async def delete_checkpoint_async(self, training_run_id: str, checkpoint_id: str) -> None:
        await self.delete_checkpoint(training_run_id, checkpoint_id)

    async def delete_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        await self.delete_checkpoint_from_tinker_path(tinker_path)


def _check_page(limit: Any, offset: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequestError("limit", f"must be an int >= 1, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequestError("offset", f"must be an int >= 0, got {offset!r}")


def _check_scope(access_scope: Any, project_id: Any) -> None:
    if access_scope not in ACCESS_SCOPES:
        raise BadRequestError("access_scope", f"must be one of {ACCESS_SCOPES}, got {access_scope!r}")
    if project_id is not None:
        raise BadRequestError("project_id", "projects are not part of tinker-std (one user per checkpoint store)")


def _parse(tinker_path: str) -> ParsedCheckpointTinkerPath:
    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
    except ValueError as exc:
        raise BadRequestError("path", str(exc)) from None
