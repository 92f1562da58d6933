"""The ASGI application of the tinker-std server (Starlette), served by uvicorn (``http.py``) or
any ASGI host (a Modal web endpoint imports ``create_app``).

Each request passes, in this order:

1. the middleware of ``middleware.py``: access log, body size limit, authentication; then
   ``hot_routes.HotRoutes`` answers a training step's requests (``forward_backward``,
   ``optim_step``, ``retrieve_future``) itself, as steps 2-4 would, with less work;
2. Starlette's router, over the routes ``WireService.endpoints`` declares (a path no route
   declares is 404, a method its route does not answer is 405);
3. the route's handler, with the body read (limited again as it streams and after zstd
   decompression: ``read_body``): on a worker thread, or on the event loop for an ``inline``
   endpoint's small body (cheap work: a thread hop would cost more than the work);
4. for an error the handler raised, its answer from ``failures.error_reply``.

Every 4xx/5xx answer except 404 and 408 carries ``x-should-retry: false``, so the SDK fails fast
instead of retrying a request that cannot succeed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tinker_std.client.service import ServiceClient

from .failures import MAPPED, error_reply, not_found_reply
from .futures import DEFAULT_MAX_QUEUED_PER_TENANT, RESULT_TTL_S
from .hot_routes import HotRoutes, answer, reply_headers
from .messages import Endpoint, WireReply, WireRequest
from .metrics import install_metrics
from .middleware import PREFIX, AccessLog, Authentication, BodySizeLimit
from .oai import oai_routes
from .operations import WireService
from .records import ServerRecords
from .tenants import Tenants

__all__ = ["DEFAULT_MAX_BODY_BYTES", "INLINE_BODY_BYTES", "PREFIX", "create_app", "default_records_path", "read_body"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: The largest body an ``inline`` endpoint's handler decodes on the event loop; a larger one goes to
#: a worker thread (decoding it would hold up every other request).
INLINE_BODY_BYTES = 256 * 1024


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
    max_queued_per_tenant: int = DEFAULT_MAX_QUEUED_PER_TENANT,
    result_ttl_s: float = RESULT_TTL_S,
) -> Starlette:
    """A Starlette app speaking the Tinker wire protocol for ``service``.

    Keys: ``tenants`` if given, else ``Tenants.load(api_key, keys_file)`` (no key at all: open,
    single tenant). Records: SQLite at ``records_path`` (default beside the checkpoint directory,
    ``default_records_path``). ``idle_session_s``: reap sessions silent this long (checked every
    ``reap_every_s``; expired checkpoint TTLs are enforced on the same tick). ``result_ttl_s``:
    how long a finished request's result stays retrievable (then 410 ``RequestLost``). The app's
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
        max_body_bytes=max_body_bytes,
        max_queued_per_tenant=max_queued_per_tenant,
        result_ttl_s=result_ttl_s,
    )
    stop = threading.Event()

    def reap() -> None:
        while not stop.wait(reap_every_s):
            with contextlib.suppress(Exception):
                operations.reap()

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

    endpoints = operations.endpoints()
    wire_routes = [_route(endpoint, max_body_bytes, operations) for endpoint in endpoints]
    app = Starlette(
        routes=[
            *operations.external.routes(tenants),  # external weights: signed download URLs
            *wire_routes,
            *oai_routes(operations, tenants, max_body_bytes),
        ],
        middleware=[
            Middleware(AccessLog),
            Middleware(BodySizeLimit, max_body_bytes=max_body_bytes),
            Middleware(Authentication, tenants=tenants),
            Middleware(
                HotRoutes,  # a training step's requests, answered as their routes would, with less work
                operations=operations,
                endpoints=endpoints,
                routes=wire_routes,
                max_body_bytes=max_body_bytes,
                inline_body_bytes=INLINE_BODY_BYTES,
            ),
        ],
        exception_handlers={HTTPException: _http_error, **{cls: _mapped_error for cls in MAPPED}},
        lifespan=lifespan,
    )
    app.state.operations = operations
    app.state.tenants = tenants
    install_metrics(app)
    return app


def _route(endpoint: Endpoint, max_body_bytes: int, operations: WireService) -> Route:
    """A Starlette route that reads the body (zstd included) and answers with ``endpoint``'s
    handler as ``hot_routes.answer`` runs it."""

    async def handle(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        wire_request = WireRequest(
            endpoint=request.url.path[len(PREFIX) :],
            body=body,
            method=request.method,
            query=dict(request.query_params),
            tenant=request.scope["state"]["tenant"],
            params={name: str(value) for name, value in request.path_params.items()},
        )
        return _response(await answer(endpoint, wire_request, operations, INLINE_BODY_BYTES))

    return Route(PREFIX + endpoint.path, handle, methods=list(endpoint.methods))


async def _mapped_error(request: Request, exc: Exception) -> Response:
    return _response(error_reply(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own refusals: no route for the path (404), or none for the method (405)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _response(not_found_reply(f"unknown endpoint {request.url.path}"))
    error = f"{exc.detail}: {request.method} {request.url.path}"
    return _response(WireReply.json({"error": error, "category": "user"}, exc.status_code))


async def read_body(request: Request, limit: int) -> bytes | Response:
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
    headers = {name.decode(): value.decode() for name, value in reply_headers(reply)}
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)
