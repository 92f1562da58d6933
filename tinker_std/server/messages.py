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
from collections.abc import Callable
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
    "Handler",
    "WireReply",
    "WireRequest",
    "body_digest",
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
        return cls(status, JSON, json.dumps(value).encode())

    @classmethod
    def protobuf(cls, body: bytes) -> WireReply:
        return cls(200, PROTOBUF, body)


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


@dataclass(frozen=True)
class Endpoint:
    """One declared route: ``path`` under ``/api/v1/``, the ``methods`` it answers, its handler."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = RPC_METHODS


def body_digest(body: bytes) -> str:
    """What identifies a retried request: the SHA-256 of its body."""
    return hashlib.sha256(body).hexdigest()


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
