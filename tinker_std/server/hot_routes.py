"""The SDK's per-step endpoints without Starlette's router, ``Request`` and ``Response``.

A training step through the SDK is four requests: the ``forward_backward`` and ``optim_step``
submits and a ``retrieve_future`` poll for each. In a server that also trains, the event loop's
Python competes for the GIL with the engine's, so each request's framework work (route matching
over every declared route, a ``Request`` and a ``Response`` object, two exception-mapping layers)
lengthens the step (bench/server_overhead.py). ``HotRoutes``, the innermost middleware (after the
access log, the size limit and authentication, so those and the metrics see these requests as
any other), answers an uncompressed request to one of those paths itself, with exactly what the
route (``asgi._route``) would answer: the same handler on the same thread, a ``MAPPED`` error
as ``failures.error_reply``, anything else raised on to Starlette's 500, the same headers (both
call ``answer``).
Every other request, and a compressed body, goes on to Starlette unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .failures import MAPPED, ServerShutdown, error_reply
from .messages import Endpoint, WireReply, WireRequest
from .middleware import PREFIX
from .operations import WireService

__all__ = ["HOT_ENDPOINTS", "HotRoutes", "answer", "reply_headers"]

_DISCONNECTED = b"<disconnected>"  # compared by identity

#: The endpoints a training step through the SDK calls.
HOT_ENDPOINTS = ("forward_backward", "optim_step", "retrieve_future")


def reply_headers(reply: WireReply) -> list[tuple[bytes, bytes]]:
    """The headers of ``reply``'s answer after ``content-length`` and ``content-type``: 429 and
    503 say ``x-should-retry: true`` (the SDK backs off and resends), other 4xx/5xx except 404
    and 408 ``false`` (the SDK would only repeat the same refusal)."""
    if reply.status in (429, 503):
        return [(b"x-should-retry", b"true")]
    if reply.status >= 400 and reply.status not in (404, 408):
        return [(b"x-should-retry", b"false")]
    return []


class HotRoutes:
    """Answers ``HOT_ENDPOINTS`` (module docstring); ``routes``: the app's routes, whose route
    object for a hot path is left in ``scope["route"]`` as Starlette's router would (the metrics
    label requests by it)."""

    def __init__(
        self,
        app: ASGIApp,
        operations: WireService,
        endpoints: Sequence[Endpoint],
        routes: Sequence[Route],
        max_body_bytes: int,
        inline_body_bytes: int,
    ) -> None:
        self.app, self.operations = app, operations
        self.max_body_bytes, self.inline_body_bytes = max_body_bytes, inline_body_bytes
        by_path = {route.path: route for route in routes}
        self.hot = {
            PREFIX + e.path: (e, by_path[PREFIX + e.path])
            for e in endpoints
            if e.path in HOT_ENDPOINTS and PREFIX + e.path in by_path
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot.get(scope["path"]) if scope["type"] == "http" else None
        if hot is None or scope["method"] not in hot[0].methods or _encoded(scope):
            await self.app(scope, receive, send)
            return
        endpoint, scope["route"] = hot
        body = await self._body(receive)
        if body is _DISCONNECTED:
            return  # the client hung up before sending the whole body: nobody to answer
        if body is None:
            reply = WireReply.json({"error": f"request body over {self.max_body_bytes} bytes", "category": "user"}, 413)
        else:
            reply = await self._answer(endpoint, scope, body)
        headers = [
            (b"content-length", str(len(reply.body)).encode()),
            (b"content-type", reply.content_type.encode()),
            *reply_headers(reply),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` once it grows over the limit."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _answer(self, endpoint: Endpoint, scope: Scope, body: bytes) -> WireReply:
        query = scope.get("query_string", b"")
        request = WireRequest(
            endpoint=scope["path"][len(PREFIX) :],
            body=body,
            method=scope["method"],
            query=dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {},
            tenant=scope["state"]["tenant"],
        )
        return await answer(endpoint, request, self.operations, self.inline_body_bytes)


async def answer(
    endpoint: Endpoint, request: WireRequest, operations: WireService, inline_body_bytes: int
) -> WireReply:
    """``endpoint``'s reply to ``request``, as every wire route answers: its handler awaited if it
    is async, run on the event loop if it is ``inline`` and the body at most ``inline_body_bytes``,
    else on a worker thread; a ``MAPPED`` error as ``failures.error_reply``; during shutdown a
    typed, retryable 503; anything else raised on (Starlette's 500)."""
    if operations.closing:  # a request arriving during shutdown: typed, retryable (503)
        return error_reply(ServerShutdown("the server is shutting down; retry"))
    try:
        if endpoint.async_handler is not None:
            return await endpoint.async_handler(request)
        if endpoint.inline and len(request.body) <= inline_body_bytes:
            return endpoint.handler(request)
        return await run_in_threadpool(endpoint.handler, request)
    except Exception as exc:
        if operations.closing:  # e.g. the records closed under it: not a 500
            return error_reply(ServerShutdown("the server shut down while answering; retry"))
        if isinstance(exc, MAPPED):
            return error_reply(exc)
        raise


def _encoded(scope: Scope) -> bool:
    """Whether the body comes with a ``Content-Encoding`` (zstd: left to ``asgi.read_body``)."""
    return any(name.lower() == b"content-encoding" for name, _ in scope["headers"])
