"""The server's middleware, one concern each (pure ASGI: none of them reads the body).

Outermost first (``asgi.create_app`` stacks them so):

1. ``AccessLog``: one structured record per request (logger ``tinker_std.server.access``, JSON
   in the message: method, path, status, tenant, bytes in/out, milliseconds, SDK method,
   encoding), whatever answered it, written just before the last byte of the answer is sent
   (nothing is measured or encoded while that logger is off for INFO);
2. ``BodySizeLimit``: a ``Content-Length`` over the limit is answered 413 before one byte of the
   body is read (and before authentication); the connection is closed after it. A body without
   a length is limited while it is read (``asgi.read_body``);
3. ``Authentication``: ``X-API-Key`` is mapped to a tenant (``Tenants``) for every path under
   ``/api/v1/``; a refused key is 401. The tenant is left in ``scope["state"]["tenant"]``.

Errors raised by a route are mapped to their answers by ``failures.error_reply`` (Starlette's
exception handlers, installed by ``create_app``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tenants import Tenants

__all__ = ["PREFIX", "AccessLog", "Authentication", "BodySizeLimit", "send_error", "access_log"]

PREFIX = "/api/v1/"
access_log = logging.getLogger("tinker_std.server.access")


class AccessLog:
    """Logs one JSON record per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        outcome: dict[str, Any] = {"status": 500, "bytes_out": 0, "logged": False}

        def log() -> None:
            if outcome["logged"]:
                return
            outcome["logged"] = True
            length = headers.get("content-length", "")
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": outcome["status"],
                        "tenant": scope.get("state", {}).get("tenant"),
                        "bytes_in": int(length) if length.isdigit() else None,
                        "bytes_out": outcome["bytes_out"],
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        "sdk_method": headers.get("x-sdk-method"),
                        "encoding": headers.get("content-encoding"),
                    }
                )
            )

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            elif message["type"] == "http.response.body":
                outcome["bytes_out"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    log()  # before the client can see the whole answer, so the record is there first
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            log()  # an answer that never completed


class BodySizeLimit:
    """Answers 413 to a request whose ``Content-Length`` is over ``max_body_bytes`` (or not a
    number), unread."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = _headers(scope).get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await send_error(413, f"request body over {self.max_body_bytes} bytes", send)
                return
        await self.app(scope, receive, send)


class Authentication:
    """Maps ``X-API-Key`` to a tenant for the API's paths; 401 for a refused key."""

    def __init__(self, app: ASGIApp, tenants: Tenants) -> None:
        self.app, self.tenants = app, tenants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            tenant = self.tenants.tenant_of(_headers(scope).get("x-api-key"))
            if tenant is None:
                await send_error(401, "invalid X-API-Key", send)
                return
            scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, decoded once per request (kept in the scope)."""
    headers: dict[str, str] | None = scope.get(_HEADERS_KEY)
    if headers is None:
        headers = scope[_HEADERS_KEY] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    return headers


_HEADERS_KEY = "tinker_std.headers"


async def send_error(status: int, error: str, send: Send) -> None:
    """Answer ``{"error", "category": "user"}`` with ``x-should-retry: false`` (the SDK would
    only repeat the same refusal)."""
    body = json.dumps({"error": error, "category": "user"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-should-retry", b"false"),
    ]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body must not be parsed as a request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
