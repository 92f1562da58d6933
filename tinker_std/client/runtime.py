"""The background event loop that runs a ServiceClient's backend."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..futures import APIFuture

__all__ = ["EventLoopThread"]

T = TypeVar("T")


class EventLoopThread:
    """A daemon thread running one asyncio loop; coroutines are submitted from any thread."""

    def __init__(self, name: str = "tinker-std") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> APIFuture[T]:
        """Schedule ``coro`` on the loop; FIFO with respect to other submissions."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return APIFuture(future, self.thread)

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if not self.in_loop_thread():
                self.thread.join(timeout=10)
