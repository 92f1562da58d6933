"""The OpenAI-compatible HTTP routes: ``/oai/api/v1/completions``, ``/oai/api/v1/chat/completions``
and ``GET /oai/api/v1/models`` (hosted Tinker's paths: point an OpenAI client's ``base_url`` at
``<server>/oai/api/v1``).

Each request is authenticated with the server's own keys (``Authorization: Bearer <key>``, as
OpenAI clients send it, or ``X-API-Key``; 401 otherwise), admitted against the tenant's quota of
unfinished requests (429, LIM-6), validated in full (a 400 naming the field, before any sampling),
then sampled on a worker thread (``generate``). Errors use OpenAI's body
``{"error": {"message", "type", "param", "code"}}``: ``param`` is the offending field, ``code`` the
tinker-std error type. A stream is ``text/event-stream``: ``data: <chunk>`` events, then
``data: [DONE]``; it sends tokens as they are decoded where the backend decodes incrementally
(``stream.py``), else the finished reply in chunks (``replies.py``; ``GET /models`` says which).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinker_std.client.sampling import decodes_incrementally
from tinker_std.errors import BadRequestError, TinkerError
from tinker_std.types import SamplingParams

from ..futures import FutureStore
from ..tenants import Tenants
from .generate import Generation, generate
from .models import OaiModels, tenant_of_request
from .replies import chat_chunks, chat_reply, completion_chunks, completion_reply
from .stream import IncrementalSampling
from .stream_replies import chat_stream, completion_stream, first_event
from .wire import ChatCompletionRequest, CompletionRequest

__all__ = ["OAI_PREFIX", "oai_routes"]

OAI_PREFIX = "/oai/api/v1"
_T = TypeVar("_T")
#: OpenAI's error ``type`` for each status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
#: The OpenAI name of a field the sampling library names otherwise.
_LIBRARY_FIELDS = {"num_samples": "n", "topk_sample_logprobs": "logprobs", "topk_prompt_logprobs": "logprobs"}
#: A completion's ``max_tokens`` when the request gives none (OpenAI's default).
DEFAULT_COMPLETION_MAX_TOKENS = 16


def oai_routes(
    models: OaiModels, tenants: Tenants, futures: FutureStore, max_body_bytes: int, closing: Callable[[], bool]
) -> list[Route]:
    """The routes, served by the server's ASGI app beside the Tinker API's; while ``closing()``
    every request is answered 503 (retryable), as the Tinker API's are."""
    api = _OaiApi(models, tenants, futures, max_body_bytes, closing)
    return [
        Route(f"{OAI_PREFIX}/completions", api.completions, methods=["POST"]),
        Route(f"{OAI_PREFIX}/chat/completions", api.chat_completions, methods=["POST"]),
        Route(f"{OAI_PREFIX}/models", api.list_models, methods=["GET"]),
    ]


class _OaiApi:
    def __init__(
        self,
        models: OaiModels,
        tenants: Tenants,
        futures: FutureStore,
        max_body_bytes: int,
        closing: Callable[[], bool],
    ) -> None:
        self.models, self.tenants, self.futures, self.max_body_bytes = models, tenants, futures, max_body_bytes
        self.closing = closing

    async def list_models(self, request: Request) -> Response:
        """The base models and the caller's sampler checkpoints. Each entry's ``streaming`` says
        how ``stream=True`` is served: ``"incremental"`` (tokens as they are decoded) or
        ``"after_generation"`` (a backend without incremental decode: the finished reply in chunks)."""
        tenant = self._tenant(request)
        if tenant is None:
            return _error(401, "invalid API key", None, "AuthenticationError")
        streaming = "incremental" if self.models.decodes_incrementally() else "after_generation"
        base = await run_in_threadpool(self.models.base_models)
        paths = await run_in_threadpool(self.models.sampler_checkpoints, tenant)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "tinker-std", "root": m, "streaming": streaming}
            for m in base
        ]
        data += [
            {"id": path, "object": "model", "created": at, "owned_by": tenant, "root": root, "streaming": streaming}
            for path, root, at in paths
        ]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, CompletionRequest, self._complete)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, ChatCompletionRequest, self._chat)

    def _tenant(self, request: Request) -> str | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return tenant_of_request(self.tenants, headers)

    async def _serve(self, request: Request, kind: type[BaseModel], run: Callable[[Any, str], Response]) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return _error(401, "invalid API key (send it as Authorization: Bearer <key>)", None, "AuthenticationError")
        request.scope.setdefault("state", {})["tenant"] = tenant  # for the access log
        if self.closing():
            return _error(503, "ServerShutdown: the server is shutting down; retry", None, "ServerShutdown")
        try:
            parsed = _validated(kind, await read_body(request, self.max_body_bytes))
            self.futures.check_capacity(tenant)
            return await run_in_threadpool(run, parsed, tenant)
        except TinkerError as exc:
            return _tinker_error(exc)

    def _complete(self, req: CompletionRequest, tenant: str) -> Response:
        client = self.models.sampler(tenant, req.model)
        tokenizer = client.get_tokenizer()
        prompts = _prompt_tokens(tokenizer, req.prompt)
        k = req.logprobs or 0
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        usage = req.stream_options is not None and req.stream_options.include_usage
        # echoed prompt logprobs come with the finished request: that stream is the whole reply's
        if req.stream and decodes_incrementally(client) and not (req.echo and req.logprobs is not None):
            sampling = self._renamed(lambda: self._incremental(client, req, prompts, k, tenant))
            head = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
            events = self._renamed(lambda: first_event(sampling))
            return _sse(
                completion_stream(
                    sampling, events, head, logprobs=req.logprobs is not None, echo=req.echo, usage=usage
                ),
                on_close=sampling.close,
            )
        generations = self._generate(
            client, req, prompts, k, tenant, echo_logprobs=req.echo and req.logprobs is not None
        )
        reply = completion_reply(
            tokenizer,
            generations,
            rid=rid,
            created=created,
            model=req.model,
            logprobs=req.logprobs is not None,
            echo=req.echo,
        )
        if not req.stream:
            return JSONResponse(reply.model_dump())
        return _sse(
            completion_chunks(
                reply, tokenizer, generations, logprobs=req.logprobs is not None, echo=req.echo, usage=usage
            )
        )

    def _chat(self, req: ChatCompletionRequest, tenant: str) -> Response:
        client = self.models.sampler(tenant, req.model)
        tokenizer: Any = client.get_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise BadRequestError(
                "messages", f"the tokenizer of {req.model!r} has no chat template; use /completions with a prompt"
            )
        for i, message in enumerate(req.messages):
            if message.name is not None and "name" not in str(tokenizer.chat_template):
                raise BadRequestError(f"messages[{i}].name", f"the chat template of {req.model!r} does not use names")
        try:
            text = tokenizer.apply_chat_template(
                [m.template_dict() for m in req.messages], add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # a template's own raise_exception (e.g. an unsupported role), a jinja error
            raise BadRequestError("messages", f"the chat template of {req.model!r} refused them: {exc}") from None
        prompt = list(tokenizer.encode(text, add_special_tokens=False))
        k = (req.top_logprobs or 0) if req.logprobs else 0
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = req.stream_options is not None and req.stream_options.include_usage
        if req.stream and decodes_incrementally(client):
            sampling = self._renamed(lambda: self._incremental(client, req, [prompt], k, tenant))
            events = self._renamed(lambda: first_event(sampling))
            head = {"id": rid, "created": created, "model": req.model}
            return _sse(
                chat_stream(sampling, events, head, logprobs=req.logprobs, usage=usage), on_close=sampling.close
            )
        generations = self._generate(client, req, [prompt], k, tenant, echo_logprobs=False)
        reply = chat_reply(tokenizer, generations, rid=rid, created=created, model=req.model, logprobs=req.logprobs)
        if not req.stream:
            return JSONResponse(reply.model_dump())
        return _sse(chat_chunks(reply, tokenizer, generations, logprobs=req.logprobs, usage=usage))

    def _generate(
        self, client: Any, req: Any, prompts: list[list[int]], k: int, tenant: str, *, echo_logprobs: bool
    ) -> list[Generation]:
        max_tokens = _max_tokens(req)
        return self._renamed(lambda: self._sample(client, req, prompts, k, max_tokens, tenant, echo_logprobs))

    def _incremental(self, client: Any, req: Any, prompts: list[list[int]], k: int, tenant: str) -> IncrementalSampling:
        params = SamplingParams(
            max_tokens=_max_tokens(req),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop_strings() or None,
        )
        return IncrementalSampling(
            client,
            prompts,
            n=req.n,
            params=params,
            stop=req.stop_strings(),
            top_logprobs=k,
            track=lambda future: self._track(future, tenant),
        )

    @staticmethod
    def _renamed(run: Callable[[], _T]) -> _T:
        """``run()``; a ``BadRequestError`` names the OpenAI field, not the library's."""
        try:
            return run()
        except BadRequestError as exc:
            renamed = _LIBRARY_FIELDS.get(exc.field, exc.field.removeprefix("sampling_params."))
            exc.field, exc.args = renamed, (f"{renamed}: {exc.problem}",)
            raise

    def _sample(
        self,
        client: Any,
        req: Any,
        prompts: list[list[int]],
        k: int,
        max_tokens: int | None,
        tenant: str,
        echo_logprobs: bool,
    ) -> list[Generation]:
        return generate(
            client,
            prompts,
            n=req.n,
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop_strings(),
            top_logprobs=k,
            echo_logprobs=echo_logprobs,
            track=lambda future: self._track(future, tenant),
        )

    def _track(self, future: Future[Any], tenant: str) -> None:
        """Count a sampling request against ``tenant``'s quota (LIM-6) and in the metrics while it
        runs, as the Tinker API's ``asample`` does; it is not kept for ``retrieve_future`` after."""
        request_id = self.futures.store(future, "sample", tenant)
        future.add_done_callback(lambda _: self.futures.forget(request_id))


def _max_tokens(req: Any) -> int | None:
    if req.max_tokens is None and isinstance(req, CompletionRequest):
        return DEFAULT_COMPLETION_MAX_TOKENS
    return req.max_tokens  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; ``BadRequestError`` on ``body`` if it is over ``limit`` bytes (the
    transport's ``BodySizeLimit`` already refused an over-long ``Content-Length``)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequestError("body", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validated(kind: type[BaseModel], raw: bytes) -> Any:
    """``raw`` JSON as a ``kind``, strictly (``"n": true`` or ``"stream": "yes"`` is refused, not
    coerced); the field of the most specific problem is named."""
    try:
        return kind.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors()  # the deepest location is the most specific (a union reports each member)
        first = max(errors, key=lambda e: _depth(e["loc"]))
        raise BadRequestError(_field_of(first["loc"]) or "body", first["msg"]) from None


def _field_of(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path (``messages[0].content``), without the names
    pydantic gives the members of a union (``str``, ``list[int]``, ...)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _UNION_TAGS:
            out += f".{part}" if out else part
    return out


def _depth(loc: tuple[Any, ...]) -> int:
    return sum(1 for part in loc if isinstance(part, int) or (part.isidentifier() and part not in _UNION_TAGS))


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "text"}


def _prompt_tokens(tokenizer: Any, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """Each prompt's tokens: text is encoded as the model's tokenizer does by default (special tokens
    such as a BOS included), token ids are taken as they are."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise BadRequestError("prompt", "must not be empty")
    out = []
    for i, item in enumerate(items):
        tokens = list(tokenizer.encode(item)) if isinstance(item, str) else list(item)
        if not tokens:
            raise BadRequestError(f"prompt[{i}]" if len(items) > 1 else "prompt", "encodes to no tokens")
        out.append(tokens)
    return out


def _sse(chunks: Iterator[dict[str, Any]], on_close: Callable[[], None] | None = None) -> StreamingResponse:
    def events() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    headers = {"cache-control": "no-cache"}
    if on_close is None:
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    return _ClosingStream(events(), on_close, media_type="text/event-stream", headers=headers)


class _ClosingStream(StreamingResponse):
    """A stream that calls ``on_close`` when its client disconnects (ASGI ``http.disconnect``, which
    uvicorn sends while the body is still streaming, or a failed send) and when it ends: uvicorn
    drops writes to a closed connection silently, so the body alone would run to its end."""

    def __init__(self, content: Iterator[str], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_close()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                await super().__call__(scope, receive, send)
                group.cancel_scope.cancel()
        finally:
            self.on_close()


def _tinker_error(exc: TinkerError) -> Response:
    param = getattr(exc, "field", None)
    message = f"{type(exc).__name__}: {exc}"
    return _error(exc.status_code, message, param, type(exc).__name__)


def _error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"x-should-retry": "true" if status in (429, 503) else "false"}
    return JSONResponse(body, status_code=status, headers=headers)
