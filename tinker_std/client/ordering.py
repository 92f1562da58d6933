"""Per-training-client request ordering (spec ORD-1..ORD-4).

A ticket is reserved synchronously when a call is made; the request then waits on the event loop
until every earlier ticket of the same lane has finished, whatever order the coroutines happen to
start in and whatever order the caller awaits the futures in. A failed request still releases its
turn, so it never blocks later requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["RequestLane"]

T = TypeVar("T")


class RequestLane:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_ticket = 0
        self._turn = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._abandoned: set[int] = set()

    def reserve(self) -> int:
        """Take the next position in submission order (thread-safe, non-blocking)."""
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            return ticket

    async def run(self, ticket: int, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` once all earlier tickets are done (must run on the lane's event loop)."""
        if ticket != self._turn:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters[ticket] = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                # Cancelled before its turn: it never runs, and its turn is skipped.
                self._waiters.pop(ticket, None)
                self._abandoned.add(ticket)
                raise
        try:
            return await operation()
        finally:
            self._advance()

    def _advance(self) -> None:
        self._turn += 1
        while self._turn in self._abandoned:
            self._abandoned.discard(self._turn)
            self._turn += 1
        nxt = self._waiters.pop(self._turn, None)
        if nxt is not None and not nxt.done():
            nxt.set_result(None)
