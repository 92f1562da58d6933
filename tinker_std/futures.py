"""``APIFuture``: the result handle every remote-style call returns (spec ORD)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Generator
from typing import Any, Generic, TypeVar

__all__ = ["APIFuture"]

#: Covariant: a future only hands its result out, so a list of futures of different result types
#: (``[tc.forward_backward(...), tc.optim_step(...)]``) is a list of ``APIFuture[ResponseModel]``.
T_co = TypeVar("T_co", covariant=True)


class APIFuture(Generic[T_co]):
    """A handle to a result computed on the client's event loop.

    Block with ``result(timeout)``, or ``await`` it from any event loop. Calling ``result`` from
    the client's own event-loop thread raises ``RuntimeError`` instead of deadlocking (ORD-8).
    """

    def __init__(self, future: concurrent.futures.Future[T_co], loop_thread: threading.Thread | None = None) -> None:
        self._future = future
        self._loop_thread = loop_thread

    def result(self, timeout: float | None = None) -> T_co:
        if self._loop_thread is not None and threading.current_thread() is self._loop_thread:
            raise RuntimeError(
                "APIFuture.result() was called on the tinker-std client's own event loop, where it would "
                "deadlock; use `await future` instead"
            )
        return self._future.result(timeout)

    async def result_async(self, timeout: float | None = None) -> T_co:
        return await asyncio.wait_for(asyncio.wrap_future(self._future), timeout)

    def __await__(self) -> Generator[Any, None, T_co]:
        return self.result_async().__await__()

    async def coroutine(self) -> T_co:
        return await self.result_async()

    def future(self) -> concurrent.futures.Future[T_co]:
        """The underlying ``concurrent.futures.Future``."""
        return self._future

    def done(self) -> bool:
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)
