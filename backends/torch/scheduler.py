"""``EngineQueue``: the arrival-ordered queue between ``TorchBackend``'s coroutines and its engine.

The engine is synchronous and not thread-safe, so its calls run one at a time in a worker thread.
Every request joins one queue in arrival order. When the engine is free, the queue hands it the
request at the head, and, when that is a ``forward_backward`` or a ``sample``, every request of the
same kind queued behind it up to the next request of another kind (a barrier: nothing moves past
an ``optim_step``, a checkpoint or a model creation). The engine answers such a group in one call
(``forward_backward_many`` / ``sample_many``), which may batch the work of several clients.

Ordering is unchanged by grouping: one training client never has two requests in flight (its
client lane waits for each to finish, spec ORD-1), requests of different clients are independent,
and a group holds no barrier. Before taking a group the queue waits ``window_s`` so that requests
submitted together arrive together, but only while the previous group of that kind held more than
one request: a client working alone never waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = ["EngineQueue"]

T = TypeVar("T")
Kind = Literal["call", "forward_backward", "sample"]


@dataclass
class _Request:
    kind: Kind
    payload: Any  # "call": (fn, args, kwargs); others: the item handed to the group function
    future: asyncio.Future[Any] = field(repr=False)


class EngineQueue:
    """Runs ``call`` requests alone and groups of queued ``forward_backward`` / ``sample`` items
    through ``run_group[kind](items) -> list[result | Exception]``.

    ``max_group``: most items per group. ``window_s``: see the module docstring.
    """

    def __init__(
        self,
        run_group: dict[Kind, Callable[[list[Any]], list[Any]]],
        *,
        max_group: int = 64,
        window_s: float = 0.002,
    ) -> None:
        self._run_group = run_group
        self._last_group_size: dict[Kind, int] = {}
        self.max_group = max_group
        self.window_s = window_s
        self._queue: deque[_Request] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` alone, after everything queued before it."""
        result: T = await self._submit("call", (fn, args, kwargs))
        return result

    async def submit(self, kind: Literal["forward_backward", "sample"], item: Any) -> Any:
        """Queue one groupable item; its slot of the group's result (an exception is raised)."""
        return await self._submit(kind, item)

    async def _submit(self, kind: Kind, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._queue:
                raise RuntimeError("the backend is in use from another event loop")
            self._loop, self._worker = loop, None
        request = _Request(kind, payload, loop.create_future())
        self._queue.append(request)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        while self._queue:
            kind = self._queue[0].kind
            if kind != "call" and self.window_s > 0 and self._last_group_size.get(kind, 1) > 1:
                await asyncio.sleep(self.window_s)
            group = self._take_group()
            if not group:
                continue
            head = group[0]
            self._last_group_size[head.kind] = len(group)
            try:
                if head.kind == "call":
                    fn, args, kwargs = head.payload
                    results = [await asyncio.to_thread(fn, *args, **kwargs)]
                else:
                    results = await asyncio.to_thread(self._run_group[head.kind], [r.payload for r in group])
            except asyncio.CancelledError:
                for request in group:
                    request.future.cancel()
                raise
            except Exception as exc:  # the engine call itself failed: every request in it fails
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for request, result in zip(group, results, strict=True):
                if request.future.done():  # the caller gave up waiting
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    def _take_group(self) -> list[_Request]:
        """The head request and, for a groupable head, the same-kind requests right behind it.
        Requests whose caller stopped waiting (cancelled) are dropped without running."""
        group: list[_Request] = []
        while self._queue and len(group) < self.max_group:
            request = self._queue[0]
            if group and (request.kind != group[0].kind or request.kind == "call"):
                break
            self._queue.popleft()
            if not request.future.done():
                group.append(request)
        return group
