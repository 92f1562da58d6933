"""The server's futures: every asynchronous request's result, kept under its request id until the
SDK fetches it with ``retrieve_future`` (a long poll).

A stored future belongs to the tenant that made the request; another tenant's ``retrieve_future``
is 404. ``retrieve`` waits up to ``LONG_POLL_S`` for the result and answers ``try_again`` (which
the SDK polls again) if none came; a result is protobuf for ``forward_backward`` and ``sample``
requests, JSON otherwise; a failure is encoded by ``failures.failure_reply``. ``close`` fails every
unfinished future with ``ServerShutdown`` (their long polls answer at once), and so does ``store``
for a future stored after it.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from . import protobuf
from .failures import ServerShutdown, failure_reply, not_found_reply
from .messages import WireReply, WireRequest

__all__ = ["LONG_POLL_S", "FutureStore", "Pending", "ResultKind", "chain"]

#: How long ``retrieve_future`` waits for a result before answering ``try_again`` (the SDK's
#: own HTTP timeout is 45 s).
LONG_POLL_S = 20.0

#: How a result is encoded: protobuf ``ForwardBackwardOutput`` / ``SampleResponse``, or JSON.
ResultKind = Literal["forward_backward", "sample", "json"]


@dataclass(frozen=True)
class Pending:
    """One stored request: its future, how its result is encoded, whose it is."""

    future: Future[Any]
    kind: ResultKind
    tenant: str


class FutureStore:
    """Request id -> ``Pending``, with the long poll that answers ``retrieve_future``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Pending] = {}
        self._closing = False

    def store(self, future: Future[Any], kind: ResultKind, tenant: str, request_id: str | None = None) -> str:
        """Keep ``future`` under ``request_id`` (default: a new id); the id."""
        request_id = request_id or uuid.uuid4().hex
        with self._lock:
            if self._closing and not future.done():
                future.set_exception(ServerShutdown("the server is shutting down"))
            self._entries[request_id] = Pending(future, kind, tenant)
        return request_id

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._entries.pop(request_id, None)

    def pending(self) -> list[Pending]:
        """Every stored request (finished or not)."""
        with self._lock:
            return list(self._entries.values())

    def retrieve(self, request: WireRequest) -> WireReply:
        """The ``retrieve_future`` endpoint: the result of ``request_id`` once it is there."""
        request_id = request.json().get("request_id")
        with self._lock:
            entry = self._entries.get(str(request_id))
        if entry is None or entry.tenant != request.tenant:
            return not_found_reply(f"unknown request_id {request_id!r}")
        try:
            result = entry.future.result(timeout=LONG_POLL_S)
        except TimeoutError:
            return WireReply.json({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        except Exception as exc:
            return failure_reply(exc)
        if entry.kind == "forward_backward":
            return WireReply.protobuf(protobuf.encode_forward_backward_output(result))
        if entry.kind == "sample":
            return WireReply.protobuf(protobuf.encode_sample_response(result))
        return WireReply.json(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)

    def close(self) -> None:
        """Fail every unfinished future with ``ServerShutdown``."""
        with self._lock:
            self._closing = True
            pending = [p.future for p in self._entries.values()]
        for future in pending:
            if not future.done():
                try:
                    future.set_exception(ServerShutdown("the server is shutting down"))
                except Exception:  # settled meanwhile
                    pass


def chain(source: Future[Any], target: Future[Any]) -> None:
    """Settle ``target`` with ``source``'s outcome once it has one."""

    def settle(done: Future[Any]) -> None:
        error = done.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(settle)
