"""The ASGI application of the tinker-std server (Starlette), served by uvicorn (``http.py``) or
any ASGI host (a Modal web endpoint imports ``create_app``).

Each request passes, in this order:

1. **size**: a ``Content-Length`` over ``max_body_bytes`` is answered 413 before one byte of the
   body is read (and before authentication); a body without a length is counted as it streams
   and cut off with 413 at the limit. A zstd body (``Content-Encoding: zstd``) is limited again
   after decompression;
2. **authentication**: ``X-API-Key`` is mapped to a tenant (``Tenants``); a refused key is 401;
3. the operation (``WireService.call``), on a worker thread;
4. one structured access-log record (logger ``tinker_std.server.access``, JSON in the message:
   method, path, status, tenant, bytes in/out, milliseconds).

Every 4xx/5xx answer except 404 and 408 carries ``x-should-retry: false``, so the SDK fails fast
instead of retrying a request that cannot succeed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinker_std.client.service import ServiceClient

from .operations import WireReply, WireRequest, WireService
from .records import ServerRecords
from .tenants import Tenants

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PREFIX", "create_app", "default_records_path"]

PREFIX = "/api/v1/"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
access_log = logging.getLogger("tinker_std.server.access")


def default_records_path(service: ServiceClient) -> Path | None:
    """``<checkpoint dir>.server.sqlite`` beside the backend's checkpoint directory, if it has one."""
    store = getattr(service.backend, "checkpoint_store", None)
    root = getattr(store, "root", None)
    if root is None:
        return None
    root = Path(root)
    return root.parent / f"{root.name}.server.sqlite"


def create_app(
    service: ServiceClient,
    *,
    tenants: Tenants | None = None,
    api_key: str | None = None,
    keys_file: str | Path | None = None,
    records_path: str | Path | None = None,
    sdk_chunk_datums: int | None = None,
    compress_requests: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idle_session_s: float | None = None,
    reap_every_s: float = 30.0,
    worker_threads: int = 256,
    gap_timeout_s: float = 30.0,
) -> Starlette:
    """A Starlette app speaking the Tinker wire protocol for ``service``.

    Keys: ``tenants`` if given, else ``Tenants.load(api_key, keys_file)`` (no key at all: open,
    single tenant). Records: SQLite at ``records_path`` (default beside the checkpoint directory,
    ``default_records_path``). ``idle_session_s``: reap sessions silent this long (checked every
    ``reap_every_s``; expired checkpoint TTLs are enforced on the same tick). The app's
    ``state.operations`` is its ``WireService``; closing the app (lifespan shutdown) fails every
    unfinished future with ``ServerShutdown``."""
    tenants = tenants or Tenants.load(api_key, keys_file)
    path = records_path if records_path is not None else default_records_path(service)
    records = ServerRecords(path if path is not None else ":memory:")
    operations = WireService(
        service,
        sdk_chunk_datums=sdk_chunk_datums,
        records=records,
        compress_requests=compress_requests,
        idle_session_s=idle_session_s,
        gap_timeout_s=gap_timeout_s,
    )
    stop = threading.Event()

    def reap() -> None:
        while not stop.wait(reap_every_s):
            with contextlib.suppress(Exception):
                operations.reap_idle()
                operations.rest.delete_expired()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = worker_threads
        reaper = threading.Thread(target=reap, name="tinker-std-reaper", daemon=True)
        reaper.start()
        try:
            yield
        finally:
            stop.set()
            operations.close()

    async def api(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        wire_request = WireRequest(
            endpoint=request.url.path[len(PREFIX) :],
            body=body,
            method=request.method,
            query=dict(request.query_params),
            tenant=request.scope["state"]["tenant"],
        )
        reply = await run_in_threadpool(operations.call, wire_request)
        return _response(reply)

    app = Starlette(
        routes=[Route(PREFIX + "{endpoint:path}", api, methods=["GET", "POST", "PUT", "DELETE"])],
        lifespan=lifespan,
    )
    app.state.operations = operations
    app.state.tenants = tenants
    app.add_middleware(_Guard, tenants=tenants, max_body_bytes=max_body_bytes)
    return app


class _Guard:
    """Size limit, then authentication, then the access log, around the app (pure ASGI: nothing
    here reads the body)."""

    def __init__(self, app: ASGIApp, tenants: Tenants, max_body_bytes: int) -> None:
        self.app, self.tenants, self.max_body_bytes = app, tenants, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        outcome: dict[str, Any] = {"status": 500, "bytes_out": 0}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            elif message["type"] == "http.response.body":
                outcome["bytes_out"] += len(message.get("body", b""))
            await send(message)

        tenant = None
        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await _error(413, f"request body over {self.max_body_bytes} bytes", logged_send)
            elif not scope["path"].startswith(PREFIX):
                await _error(404, f"unknown path {scope['path']}", logged_send, retry=None)
            elif (tenant := self.tenants.tenant_of(headers.get("x-api-key"))) is None:
                await _error(401, "invalid X-API-Key", logged_send)
            else:
                scope.setdefault("state", {})["tenant"] = tenant
                await self.app(scope, receive, logged_send)
        finally:
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": outcome["status"],
                        "tenant": tenant,
                        "bytes_in": int(headers["content-length"])
                        if headers.get("content-length", "").isdigit()
                        else None,
                        "bytes_out": outcome["bytes_out"],
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        "sdk_method": headers.get("x-sdk-method"),
                        "encoding": headers.get("content-encoding"),
                    }
                )
            )


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The body, decompressed; a 413/415 ``Response`` instead if it is too large or unreadable."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _json_response(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = (request.headers.get("content-encoding") or "identity").lower()
    if encoding == "identity":
        return body
    if encoding != "zstd":
        return _json_response(415, f"Content-Encoding {encoding!r} is not supported (identity or zstd)")
    import zstandard

    parts, total = [], 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while total <= limit and (part := reader.read(1 << 20)):
                parts.append(part)
                total += len(part)
    except zstandard.ZstdError as exc:
        return _json_response(400, f"BadRequestError: body: not a zstd stream: {exc}")
    if total > limit:
        return _json_response(413, f"decompressed request body over {limit} bytes")
    return b"".join(parts)


def _json_response(status: int, error: str) -> Response:
    return _response(WireReply.json({"error": error, "category": "user"}, status))


def _response(reply: WireReply) -> Response:
    headers = {}
    if reply.status >= 400 and reply.status not in (404, 408):
        headers["x-should-retry"] = "false"
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)


async def _error(status: int, error: str, send: Send, retry: str | None = "false") -> None:
    body = json.dumps({"error": error, "category": "user"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry is not None:
        headers.append((b"x-should-retry", retry.encode()))
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body must not be parsed as a request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
