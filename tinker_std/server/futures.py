"""The server's futures: every asynchronous request's result, kept under its request id until the
SDK fetches it with ``retrieve_future`` (a long poll).

A stored future belongs to the tenant that made the request; another tenant's ``retrieve_future``
is 404. ``retrieve`` waits up to ``LONG_POLL_S`` for the result and answers ``try_again`` (which
the SDK polls again) if none came; a result is protobuf for ``forward_backward`` and ``sample``
requests, JSON otherwise; a failure is encoded by ``failures.failure_reply``. ``close`` fails every
unfinished future with ``ServerShutdown`` (their long polls answer at once), and so does ``store``
for a future stored after it.

The HTTP path's cost (bench/server_overhead.py): a result is encoded once, by the thread that
settles the future, right as it settles (``Pending.reply``; never on the event loop: ``_settled``);
a waiting long poll is woken by that same callback and answers on the event loop with the bytes,
with no worker-thread hop; a poll that comes after the result answers at once; a repeated poll (the
SDK's retry) reuses the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from tinker_std.errors import TinkerError

from . import protobuf
from .failures import ServerShutdown, error_reply, failure_reply, not_found_reply
from .messages import WireReply, WireRequest

__all__ = [
    "LONG_POLL_S",
    "RESULT_TTL_S",
    "FutureStore",
    "Pending",
    "RequestLost",
    "ResultKind",
    "chain",
    "new_request_id",
    "settle_exception",
    "settle_result",
]

#: How long ``retrieve_future`` waits for a result before answering ``try_again`` (the SDK's
#: own HTTP timeout is 45 s).
LONG_POLL_S = 20.0

#: How long a finished request's result stays fetchable after it settled. The SDK fetches it at
#: once and retries within minutes; older results are dropped so that a long-running server's
#: memory does not grow with every request it ever answered. A poll for a dropped one is 410.
RESULT_TTL_S = 3600.0

#: How a result is encoded: protobuf ``ForwardBackwardOutput`` / ``SampleResponse``, or JSON.
ResultKind = Literal["forward_backward", "sample", "json"]


@dataclass
class Pending:
    """One stored request: its future, how its result is encoded, whose it is; once the future is
    settled, ``reply`` is its encoded answer (``encode_reply``, done once)."""

    future: Future[Any]
    kind: ResultKind
    tenant: str
    reply: WireReply | None = field(default=None, compare=False)
    #: ``time.monotonic()`` when the future settled (``None`` while it runs)
    settled_at: float | None = field(default=None, compare=False)
    _encode_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def encode_reply(self) -> WireReply:
        """The answer for the settled ``future``: its result encoded, or its failure; encoded on the
        first call only (the settling thread's callback, or a poll that raced it)."""
        reply = self.reply
        if reply is not None:
            return reply
        with self._encode_lock:
            if self.reply is None:
                self.reply = _encode(self)
            return self.reply


#: The first characters of every request id this server process mints. A well-formed id with
#: another prefix was admitted by an earlier process (killed or restarted): its result is gone.
PROCESS_PREFIX = uuid.uuid4().hex[:8]
_ID_LENGTH = len(PROCESS_PREFIX) + 32


_ID_SECRET = os.urandom(16)
_id_counter = itertools.count()


def new_request_id() -> str:
    """A fresh request id of this server process: ``PROCESS_PREFIX``, a counter and a MAC of it
    under a per-process secret, so the process can tell an id it minted (whose result it may have
    dropped: 410) from one it never did (404) without remembering either."""
    body = f"{next(_id_counter):016x}"
    return PROCESS_PREFIX + body + _id_mac(body)


def _id_mac(body: str) -> str:
    return hmac.new(_ID_SECRET, body.encode("ascii"), hashlib.sha256).hexdigest()[:16]


class RequestLost(TinkerError):
    """``retrieve_future`` of a request admitted by an earlier server process: the server was
    killed or restarted since, and the result died with it. HTTP 410, which the SDK reads as a
    broken promise (``RetryableException``): the caller sends the request again or resumes from
    its last checkpoint. (Without it, the SDK turned the 404 of an unknown id into a bare
    ``ValueError``.)"""

    status_code = 410
    retryable = True


#: Default of ``FutureStore.max_queued_per_tenant`` (LIM-6).
DEFAULT_MAX_QUEUED_PER_TENANT = 2048


class TenantQueueFull(TinkerError):
    """A tenant has ``max_queued_per_tenant`` unfinished requests: the new one is refused before it
    is admitted (HTTP 429, retryable: the SDK backs off and resends it, LIM-6)."""

    status_code = 429
    retryable = True


class FutureStore:
    """Request id -> ``Pending``, with the long poll that answers ``retrieve_future``, and each
    tenant's count of unfinished requests (its quota, LIM-6)."""

    def __init__(
        self, max_queued_per_tenant: int = DEFAULT_MAX_QUEUED_PER_TENANT, result_ttl_s: float = RESULT_TTL_S
    ) -> None:
        if not result_ttl_s > 0:
            raise ValueError(f"result_ttl_s must be > 0, got {result_ttl_s!r}")
        self._lock = threading.Lock()
        self._entries: dict[str, Pending] = {}
        self.result_ttl_s = result_ttl_s
        self._last_sweep = time.monotonic()
        self._closing = False
        #: called with each stored request, under no lock (``metrics.ServerMetrics`` counts tokens)
        self.observers: list[Callable[[Pending], None]] = []
        self.max_queued_per_tenant = max_queued_per_tenant
        self._queued: Counter[str] = Counter()

    def check_capacity(self, tenant: str) -> None:
        """``TenantQueueFull`` when ``tenant`` already has its quota of unfinished requests
        (called before a request is admitted, so a refused one changes nothing)."""
        with self._lock:
            queued = self._queued[tenant]
        if queued >= self.max_queued_per_tenant:
            raise TenantQueueFull(
                f"{queued} requests of this key are unfinished (limit {self.max_queued_per_tenant}); "
                "retry after some complete"
            )

    def paused(self, tenant: str) -> bool:
        """Whether ``tenant`` is at its quota (``retrieve_future`` then says ``paused_capacity``)."""
        with self._lock:
            return self._queued[tenant] >= self.max_queued_per_tenant

    def store(self, future: Future[Any], kind: ResultKind, tenant: str, request_id: str | None = None) -> str:
        """Keep ``future`` under ``request_id`` (default: a new id); the id. It counts against
        ``tenant``'s quota until it finishes."""
        request_id = request_id or new_request_id()
        with self._lock:
            self._drop_expired(time.monotonic())
            if self._closing:
                settle_exception(future, ServerShutdown("the server is shutting down"))
            entry = self._entries[request_id] = Pending(future, kind, tenant)
            if not future.done():
                self._queued[tenant] += 1
                counted = True
            else:
                counted = False
        for observe in self.observers:
            observe(entry)
        if counted:

            def done(_: Future[Any]) -> None:
                with self._lock:
                    self._queued[tenant] -= 1

            future.add_done_callback(done)
        server_loop = _running_loop()  # set when stored by a route on the server's event loop
        future.add_done_callback(lambda _: _settled(entry, server_loop))
        return request_id

    def _drop_expired(self, now: float) -> None:
        """Drop results that settled over ``result_ttl_s`` ago; at most one sweep per ``ttl / 4``
        (and per minute), so storing stays O(1) amortised. Called under the lock."""
        if now - self._last_sweep < min(60.0, self.result_ttl_s / 4):
            return
        self._last_sweep = now
        expired = [
            request_id
            for request_id, entry in self._entries.items()
            if entry.settled_at is not None and now - entry.settled_at > self.result_ttl_s
        ]
        for request_id in expired:
            del self._entries[request_id]

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._entries.pop(request_id, None)

    def pending(self) -> list[Pending]:
        """Every stored request (finished or not)."""
        with self._lock:
            return list(self._entries.values())

    def _entry(self, request: WireRequest) -> tuple[str, Pending | None]:
        request_id = str(request.json().get("request_id"))
        with self._lock:
            entry = self._entries.get(request_id)
        return request_id, entry

    def _missing(self, request_id: str, entry: Pending | None, tenant: str) -> WireReply | None:
        """The answer when ``request_id`` is not the caller's stored request: another tenant's is
        404 as if unknown; one this process minted and no longer holds expired (410)."""
        if entry is not None:
            return None if entry.tenant == tenant else not_found_reply(f"unknown request_id {request_id!r}")
        if _minted_here(request_id):
            return error_reply(
                RequestLost(
                    f"the result of request {request_id!r} expired: results are kept "
                    f"{self.result_ttl_s:g} s after they finish"
                )
            )
        return _unknown(request_id)

    def retrieve(self, request: WireRequest) -> WireReply:
        """The ``retrieve_future`` endpoint, waiting on the calling thread (in-process use)."""
        request_id, entry = self._entry(request)
        missing = self._missing(request_id, entry, request.tenant)
        if missing is not None or entry is None:
            return missing or _unknown(request_id)
        try:
            entry.future.result(timeout=LONG_POLL_S)
        except TimeoutError:
            return _try_again(request_id, self.paused(entry.tenant))
        except Exception:
            pass
        return entry.encode_reply()

    async def retrieve_async(self, request: WireRequest) -> WireReply:
        """The ``retrieve_future`` endpoint as the server runs it, on the event loop: a finished
        request is answered at once with its encoded reply; an unfinished one waits holding no
        worker thread (a thread per waiting poll starved every other request of threads under
        load) until the settling thread, having encoded the reply, wakes it, or ``LONG_POLL_S``
        passes (``try_again``)."""
        request_id, entry = self._entry(request)
        missing = self._missing(request_id, entry, request.tenant)
        if missing is not None or entry is None:
            return missing or _unknown(request_id)
        if not entry.future.done():
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()

            def settle() -> None:
                if not woken.done():
                    woken.set_result(None)

            def wake(_: Future[Any]) -> None:
                _encode_quietly(entry)  # on the settling thread, before the loop is woken
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(settle)

            entry.future.add_done_callback(wake)
            await asyncio.wait([woken], timeout=LONG_POLL_S)
            if not entry.future.done():
                return _try_again(request_id, self.paused(entry.tenant))
        return entry.encode_reply()

    def close(self) -> None:
        """Fail every unfinished future with ``ServerShutdown``."""
        with self._lock:
            self._closing = True
            pending = [p.future for p in self._entries.values()]
        for future in pending:
            settle_exception(future, ServerShutdown("the server is shutting down"))


def _encode(entry: Pending) -> WireReply:
    """The reply for a settled ``entry``: its result encoded, or its failure."""
    try:
        result = entry.future.result(timeout=0)
    except Exception as exc:
        return failure_reply(exc)
    if entry.kind == "forward_backward":
        return WireReply.protobuf(protobuf.encode_forward_backward_output(result))
    if entry.kind == "sample":
        return WireReply.protobuf(protobuf.encode_sample_response(result))
    return WireReply.json(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)


def _encode_quietly(entry: Pending) -> None:
    """Encode ``entry``'s reply now (a done callback); an encoding that raises is left for the
    poll, where it raises again and is answered like any error of a route."""
    with contextlib.suppress(Exception):
        entry.encode_reply()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settled(entry: Pending, server_loop: asyncio.AbstractEventLoop | None) -> None:
    """Note when ``entry`` settled and encode its reply where it settled, except on the server's
    event loop (``server_loop``, the loop that stored it, if any): a step run on the admitting
    thread whose backend answered at once settles there, and the loop hands a protobuf encoding to
    its thread pool (a poll arriving meanwhile waits on ``Pending``'s lock and gets the same
    bytes). A ``json`` reply (an optimizer step's metrics) is small: it is encoded in place."""
    entry.settled_at = time.monotonic()
    if server_loop is not None and entry.kind != "json" and _running_loop() is server_loop:
        server_loop.run_in_executor(None, _encode_quietly, entry)
    else:
        _encode_quietly(entry)


def _minted_here(request_id: str) -> bool:
    if len(request_id) != _ID_LENGTH or not request_id.startswith(PROCESS_PREFIX):
        return False
    body, mac = request_id[len(PROCESS_PREFIX) : -16], request_id[-16:]
    return all(c in "0123456789abcdef" for c in body) and hmac.compare_digest(mac, _id_mac(body))


def _unknown(request_id: str) -> WireReply:
    """404 for an id this process never minted for the caller; 410 (``RequestLost``) for one an
    earlier server process minted."""
    minted = len(request_id) == _ID_LENGTH and all(c in "0123456789abcdef" for c in request_id)
    if minted and not request_id.startswith(PROCESS_PREFIX):
        return error_reply(
            RequestLost(
                f"request {request_id!r} was admitted by an earlier server process (restarted since); "
                "its result is lost: send it again or resume from the last checkpoint"
            )
        )
    return not_found_reply(f"unknown request_id {request_id!r}")


def _try_again(request_id: str, paused: bool = False) -> WireReply:
    """Not finished yet; ``queue_state`` says whether the tenant is at its quota (the SDK logs
    non-``active`` states as paused and keeps polling)."""
    if not paused:
        return WireReply.json({"type": "try_again", "request_id": request_id, "queue_state": "active"})
    return WireReply.json(
        {
            "type": "try_again",
            "request_id": request_id,
            "queue_state": "paused_capacity",
            "queue_state_reason": "this key has its quota of unfinished requests; new ones get 429 until some finish",
        }
    )


def chain(source: Future[Any], target: Future[Any]) -> None:
    """Settle ``target`` with ``source``'s outcome once it has one."""

    def settle(done: Future[Any]) -> None:
        error = done.exception()
        if error is not None:
            settle_exception(target, error)
        else:
            settle_result(target, done.result())

    source.add_done_callback(settle)


def settle_result(future: Future[Any], value: Any) -> None:
    """Set ``future``'s result unless it is already settled (``close`` fails every unfinished
    future at shutdown, racing the work that would settle it: the first outcome stands)."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(value)


def settle_exception(future: Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless it is already settled (see ``settle_result``)."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)
