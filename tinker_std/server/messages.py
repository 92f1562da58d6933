"""The server's own request and reply types, the declared endpoint, and the readers of request fields.

A ``WireRequest`` is one HTTP request after the transport (``asgi.py``) handled authentication,
size limits and compression; a ``WireReply`` is the answer a route gives back. An ``Endpoint``
declares one route: its path under ``/api/v1/`` (Starlette syntax, ``{name}`` for a path
segment, ``{name:path}`` for the rest), the HTTP methods it answers and its handler. Path
parameters reach the handler as ``WireRequest.params``.

The field readers raise ``BadRequestError`` naming the field, so every route refuses bad input
the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tinker_std.errors import BadRequestError

from .tenants import OPEN_TENANT

__all__ = [
    "JSON",
    "PROTOBUF",
    "RPC_METHODS",
    "Endpoint",
    "AsyncHandler",
    "Handler",
    "WireReply",
    "WireRequest",
    "body_digest",
    "operation_digest",
    "field_error",
    "require_int",
]

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
#: The SDK's remote procedure calls are POSTs, except ``healthz`` and ``get_server_capabilities``
#: (GET); each is answered on both.
RPC_METHODS = ("GET", "POST")


@dataclass(frozen=True)
class WireReply:
    """One HTTP answer."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, value: Any, status: int = 200) -> WireReply:
        """``value`` as strict JSON: a NaN or infinite number (which ``json.dumps`` would write as
        the non-JSON ``NaN``/``Infinity`` the SDK cannot parse) is written as ``null`` (FB-15)."""
        try:
            text = json.dumps(value, allow_nan=False)
        except ValueError:
            text = json.dumps(_finite(value), allow_nan=False)
        return cls(status, JSON, text.encode())

    @classmethod
    def protobuf(cls, body: bytes) -> WireReply:
        return cls(200, PROTOBUF, body)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request, after transport concerns (auth, size, compression) were handled.

    ``endpoint`` is the path after ``/api/v1/``; ``params`` the path parameters of the route that
    matched it."""

    endpoint: str
    body: bytes = b""
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    tenant: str = OPEN_TENANT
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as a JSON object (``{}`` for an empty body); ``BadRequestError`` on field
        ``body`` otherwise."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise BadRequestError("body", f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequestError("body", "must be a JSON object")
        return value


Handler = Callable[[WireRequest], WireReply]
#: A handler that waits without holding a worker thread (the ``retrieve_future`` long poll).
AsyncHandler = Callable[[WireRequest], Awaitable[WireReply]]


@dataclass(frozen=True)
class Endpoint:
    """One declared route: ``path`` under ``/api/v1/``, the ``methods`` it answers, its handler.

    ``handler`` runs on a worker thread; an endpoint that waits (a long poll) gives
    ``async_handler`` instead, which the transport awaits on its event loop, so waiting requests
    never occupy the worker threads every other request needs. ``inline``: the handler is cheap
    and never blocks (no I/O, no waiting, only short locks), so the transport runs it on its event
    loop for a body up to ``asgi.INLINE_BODY_BYTES``, sparing the two thread hops of a worker."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = RPC_METHODS
    async_handler: AsyncHandler | None = None
    inline: bool = False


def body_digest(body: bytes) -> str:
    """The SHA-256 of a request body."""
    return hashlib.sha256(body).hexdigest()


#: Body fields the SDK changes each time it resends the same operation (it draws a new
#: ``sampling_session_seq_id`` per attempt of an unnamed ``save_weights_for_sampler``).
VOLATILE_FIELDS = frozenset({"sampling_session_seq_id"})


def operation_digest(request: WireRequest) -> str:
    """What identifies an operation across the SDK's resends: the SHA-256 of its body without the
    ``VOLATILE_FIELDS`` (a JSON body, canonically re-encoded), or of the raw body (protobuf, which
    the SDK resends byte for byte)."""
    if request.body[:1] != b"{":
        return body_digest(request.body)
    try:
        value = json.loads(request.body)
    except ValueError:
        return body_digest(request.body)
    if not isinstance(value, dict):
        return body_digest(request.body)
    stable = {k: v for k, v in value.items() if k not in VOLATILE_FIELDS}
    return body_digest(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode())


def require_int(value: Any, name: str) -> int:
    """``value`` if it is an integer (not a bool); ``BadRequestError`` on ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(name, f"must be an integer, got {value!r}")
    return value


def field_error(exc: ValidationError, prefix: str) -> BadRequestError:
    """The first problem of a pydantic validation, as a ``BadRequestError`` on ``prefix.<loc>``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return BadRequestError(f"{prefix}.{where}" if where else prefix, first["msg"])
