"""``BackendSession``: what every client of one ``ServiceClient`` shares (spec BE, ORD).

One backend instance, the background event loop it runs on (``EventLoopThread``), its start
(once, before the first operation), the chunk size of the client layer, and the samples recorded
for ``stable_reinforce`` (``stability_records``, SDK-3). ``ServiceClient`` creates the session;
``TrainingClient`` and ``SamplingClient`` hold it and reach the backend only through it, so none
of them depends on another's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..backend import Backend
from ..capabilities import Capabilities
from ..errors import RequestFailedError, TinkerError
from ..futures import APIFuture
from ..limits import DEFAULT_LIMITS, Limits
from ..stability import StabilityRecords
from .graph_loss import SessionLosses
from .runtime import EventLoopThread

__all__ = ["BackendSession", "DEFAULT_MAX_CHUNK_DATUMS"]

T = TypeVar("T")

#: Datums per backend call when one forward/forward_backward is split (as in the tinker SDK).
DEFAULT_MAX_CHUNK_DATUMS = 1024


class BackendSession:
    """One started-on-demand ``backend`` on its own event loop thread.

    ``max_chunk_datums``: the most datums per backend call when the client layer splits one
    forward/forward_backward (FB-9). ``limits``: the request limits (spec LIM)."""

    def __init__(
        self, backend: Backend, max_chunk_datums: int = DEFAULT_MAX_CHUNK_DATUMS, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.backend = backend
        self.max_chunk_datums = max_chunk_datums
        self.limits = limits  # LIM-1..LIM-3, checked before a request is queued
        self.runtime = EventLoopThread(name=f"tinker-std-{backend.name}")
        self._started: asyncio.Task[None] | None = None
        #: Sequences sampled with ``record_stability_info=True`` (SDK-3), read by ``stable_reinforce``.
        self.stability_records = StabilityRecords()
        #: Graph losses made by ``ServiceClient.create_custom_loss`` in this session (CLG-6).
        self.custom_losses = SessionLosses()

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def capabilities(self) -> Capabilities:
        return type(self.backend).capabilities

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self.backend.start())
        await asyncio.shield(self._started)

    def start(self) -> APIFuture[None]:
        """Start the backend now (calls start it anyway, first); resolves once it started."""
        return self.runtime.submit(self._ensure_started())

    def submit(self, operation: Callable[[Backend], Awaitable[T]]) -> APIFuture[T]:
        """Run ``operation(backend)`` on the event loop (after the backend started); errors other
        than ``TinkerError`` become ``RequestFailedError`` (category ``server``), chained."""

        async def run() -> T:
            await self._ensure_started()
            try:
                return await operation(self.backend)
            except TinkerError:
                raise
            except Exception as exc:
                raise RequestFailedError(f"{type(exc).__name__}: {exc}", category="server") from exc

        return self.runtime.submit(run())

    def release_sampler(self, sampler_id: str) -> None:
        """Tell the backend, without waiting, that no ``SamplingClient`` of ``sampler_id`` is left
        (called by the client's finalizer, from any thread; a no-op once the session is closed)."""
        if self._started is not None and self.runtime.loop.is_running():
            self.runtime.loop.call_soon_threadsafe(self._start_release, sampler_id)

    def _start_release(self, sampler_id: str) -> None:
        task = self.runtime.loop.create_task(self.backend.release_sampler(sampler_id))
        task.add_done_callback(_ignore_result)

    def close(self) -> None:
        """Close the backend (if it started) and stop the event loop."""
        if self.runtime.loop.is_running():
            if self._started is not None:
                self.runtime.submit(self.backend.close()).result(timeout=60)
            self.runtime.stop()


def _ignore_result(task: asyncio.Task[None]) -> None:
    """Releasing is best effort: a failure frees nothing but must not be reported as unhandled."""
    if not task.cancelled():
        task.exception()
