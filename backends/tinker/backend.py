"""``TinkerBackend``: every engine call of the Backend contract made through the official ``tinker``
SDK against a server that speaks its protocol (the tinker-std server, or the hosted service).

The tinker-std client layer in front of it still validates, orders and chunks requests; this class
turns each validated call into the SDK call that carries it (training calls of one model reach the
SDK one at a time, in order, so the SDK's ``seq_id``s follow the same order), converts the types,
and maps the SDK's errors back to tinker-std's (``errors.to_std_error``).

``serve="mock"`` (or any other registered backend) starts a tinker-std server on 127.0.0.1 in this
process and drives it over loopback HTTP, for tests and CI; ``close()`` stops it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tinker_std.backend import Backend, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.capabilities import Capabilities
from tinker_std.errors import BadRequestError, NotFoundError, RequestFailedError
from tinker_std.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
)

from . import convert
from .checkpoints import RemoteCheckpointStore
from .declared import PROTOCOL_CAPABILITIES, UNKNOWN_SERVER, declared_capabilities, subclass_declaring
from .errors import (
    TinkerCredentialsError,
    TinkerServerUnreachableError,
    require_sdk,
    to_std_error,
)
from .local import LocalServer

__all__ = ["TinkerBackend", "TinkerMockBackend", "TinkerTorchBackend", "PROTOCOL_CAPABILITIES"]

T = TypeVar("T")

_KEY_PREFIXES = ("tml-", "eyJ")


class TinkerBackend(Backend):
    """A Tinker server through the official SDK.

    Options: ``base_url`` (default ``$TINKER_BASE_URL``, else the SDK's default, the hosted
    service), ``api_key`` (default ``$TINKER_API_KEY``; the SDK requires ``tml-...``), or instead
    ``serve`` (a registered backend name: serve it in this process on 127.0.0.1 with a random key)
    with ``serve_options`` (its constructor options) and ``checkpoint_dir`` (its checkpoints; refused,
    naming it, for a remote server, whose checkpoints live where that server keeps them).
    ``connect_timeout_s``: how long the first call waits for the server to accept a connection
    before ``TinkerServerUnreachableError``.

    The server's optional capabilities and tolerance class (CAP-3) cannot be read over the protocol:
    ``capabilities`` (names, or a comma-separated string) and ``tolerance`` declare them, else
    ``$TINKER_STD_TINKER_CAPABILITIES`` / ``$TINKER_STD_TINKER_TOLERANCE``, else what a ``serve``d
    backend declares, else none and ``bf16`` (``declared``; docs/server.md). The instance's type is
    then a subclass of this class carrying that declaration, since the client layer reads it there.

    Construction raises at once: ``TinkerSdkMissingError`` without the SDK, ``TinkerCredentialsError``
    without a usable key, ``BadRequestError`` for contradictory options or an undeclarable
    capability. The first call raises ``TinkerServerUnreachableError`` when nothing answers at
    ``base_url`` (no five-minute retry).
    """

    name: ClassVar[str] = "tinker"
    #: for an unknown server: nothing optional is assumed
    capabilities: ClassVar[Capabilities] = UNKNOWN_SERVER
    #: the backend ``serve`` defaults to (the variants below)
    default_serve: ClassVar[str | None] = None

    @classmethod
    def declaration_for(cls, options: Mapping[str, Any]) -> Capabilities:
        """What an instance built with ``options`` declares (read without connecting)."""
        serve = options.get("serve")
        return declared_capabilities(options, cls.capabilities, serve if serve != cls.default_serve else None)

    def __new__(cls, **options: Any) -> TinkerBackend:
        declared = cls.declaration_for(options)
        target = cls if declared == cls.capabilities else subclass_declaring(cls, declared)
        return super().__new__(target)

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        serve: str | None = None,
        serve_options: Mapping[str, Any] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        connect_timeout_s: float = 10.0,
        capabilities: str | list[str] | None = None,
        tolerance: str | None = None,
    ) -> None:
        # ``capabilities`` / ``tolerance`` took effect in __new__ (the declaration is on the type).
        require_sdk()
        serve = serve if serve is not None else self.default_serve
        if connect_timeout_s <= 0:
            raise BadRequestError("connect_timeout_s", f"must be > 0, got {connect_timeout_s!r}")
        self._local: LocalServer | None = None
        if serve is not None:
            if base_url is not None or api_key is not None:
                raise BadRequestError("serve", "give either serve (a local server) or base_url/api_key, not both")
            options = dict(serve_options or {})
            if checkpoint_dir is not None:
                options.setdefault("checkpoint_dir", str(Path(checkpoint_dir)))
            self._local = LocalServer(serve, options)
            self.base_url: str | None = None
            self._api_key: str | None = None
        else:
            if serve_options:
                raise BadRequestError("serve_options", "only meaningful together with serve")
            if checkpoint_dir is not None:  # a remote server keeps its checkpoints where it was told to
                raise BadRequestError("checkpoint_dir", "only meaningful together with serve (a local server)")
            self.base_url = base_url or os.environ.get("TINKER_BASE_URL") or None
            self._api_key = api_key or os.environ.get("TINKER_API_KEY") or None
            if self._api_key is None:
                raise TinkerCredentialsError(
                    "the tinker backend needs an API key: pass api_key='tml-...' or set TINKER_API_KEY "
                    "(or pass serve='mock' / serve='torch' to serve a local backend in this process)"
                )
            if not self._api_key.startswith(_KEY_PREFIXES):
                raise TinkerCredentialsError("api_key: the tinker SDK accepts only keys that start with 'tml-'")
        self.connect_timeout_s = connect_timeout_s
        self._sdk: Any = None
        self._rest: Any = None
        self.checkpoint_store: RemoteCheckpointStore | None = None
        self._models: dict[str, Any] = {}  # model id -> tinker.TrainingClient
        self._model_base: dict[str, str] = {}
        self._samplers: dict[str, Any] = {}  # our sampler id -> tinker.SamplingClient
        self._context: dict[str, int] = {}  # base model -> max context length
        self._tokenizer_ids: dict[str, str | None] = {}  # base model -> get_info's tokenizer_id
        self._tokenizers: dict[str, Tokenizer] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        import tinker

        if self._local is not None:
            self._local.start()
            self.base_url, self._api_key = self._local.url, self._local.api_key
        from tinker.lib.base_url import resolve_base_url

        self.base_url = resolve_base_url(self.base_url)
        self._preflight(self.base_url)
        try:
            self._sdk = tinker.ServiceClient(base_url=self.base_url, api_key=self._api_key)
            self._sdk.holder  # noqa: B018 - creates the session now (blocking), not inside a later call
            # Over the session's holder: no second holder (its thread, config fetch and connection
            # pools, which the SDK keeps for the life of the process), and closed with the session.
            self._rest = tinker.RestClient(self._sdk.holder)
        except Exception as exc:
            raise _mapped(exc) from exc
        _drop_stale_sockets(self._sdk.holder.get_loop())
        self.checkpoint_store = RemoteCheckpointStore(self._rest)

    def _preflight(self, base_url: str) -> None:
        """One plain request, so a missing server fails now instead of after the SDK's retries."""
        import httpx

        # A plain-HTTP URL needs no certificates: loading them costs ~30 ms per client here.
        verify = base_url.lower().startswith("https:")
        try:
            httpx.get(f"{base_url}/api/v1/healthz", timeout=self.connect_timeout_s, verify=verify)
        except httpx.HTTPError as exc:
            raise TinkerServerUnreachableError(base_url, f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        try:
            if self._sdk is not None and self._sdk._session_holder is not None:
                self._sdk.close("success").result(timeout=30)
        except Exception:  # the server may already be gone; nothing is left to release here
            pass
        finally:
            self._sdk = None
            self._models.clear()
            self._samplers.clear()
            if self._local is not None:
                self._local.close()

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(self, pending: Awaitable[T]) -> T:
        """Await an SDK future; its errors become tinker-std's."""
        try:
            return await pending
        except Exception as exc:
            raise _mapped(exc) from exc

    def _model(self, model_id: str) -> Any:
        try:
            return self._models[model_id]
        except KeyError:
            raise NotFoundError(f"no training model {model_id!r} on this backend") from None

    async def _max_context(self, base_model: str) -> int:
        if base_model not in self._context:
            await self.get_server_capabilities()
        # A model the server does not list: the server still validates lengths itself.
        return self._context.get(base_model, 2**31 - 1)

    async def _model_spec(self, client: Any, lora: LoraConfig | None) -> ModelSpec:
        info = client.get_info()
        base_model = str(info.model_data.model_name)
        self._tokenizer_ids.setdefault(base_model, info.model_data.tokenizer_id)
        self._models[client.model_id] = client
        self._model_base[client.model_id] = base_model
        tokenizer = await asyncio.to_thread(self.get_tokenizer, base_model)
        return ModelSpec(
            model_id=client.model_id,
            base_model=base_model,
            vocab_size=_vocab_size(tokenizer),
            max_context_length=await self._max_context(base_model),
            lora=lora if lora is not None else LoraConfig(rank=int(info.lora_rank or 1)),
        )

    # -- models and tokenizers ---------------------------------------------------------------------

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        response = convert.capabilities_from_sdk(await self._call(self._rest.get_server_capabilities()))
        for model in response.supported_models:
            if model.model_name and model.max_context_length:
                self._context[model.model_name] = model.max_context_length
        return response

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        """The protocol carries no tokenizer; like the SDK, load it here: the served backend's own
        (``serve=``), else a ``mock`` or ``minimal`` model's byte tokenizer (``_builtin_tokenizer``),
        else the ``tokenizer_id`` a training client's ``get_info`` named (a local folder on the
        tinker-std server), else the model name through ``transformers``."""
        cached = self._tokenizers.get(base_model)
        if cached is not None:
            return cached
        tokenizer: Tokenizer
        if self._local is not None and self._local.service is not None:
            tokenizer = self._local.service.backend.get_tokenizer(base_model)
        elif (builtin := _builtin_tokenizer(base_model)) is not None:
            tokenizer = builtin
        else:
            from tinker.lib.public_interfaces.sampling_client import _load_tokenizer_from_model_info

            try:
                loaded: Any = _load_tokenizer_from_model_info(base_model, self._tokenizer_ids.get(base_model))
                tokenizer = loaded
            except Exception as exc:
                raise NotFoundError(f"no tokenizer for base model {base_model!r}: {type(exc).__name__}: {exc}") from exc
        self._tokenizers[base_model] = tokenizer
        return tokenizer

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        client = await self._call(
            self._sdk.create_lora_training_client(
                base_model=base_model,
                rank=lora.rank,
                seed=lora.seed,
                train_mlp=lora.train_mlp,
                train_attn=lora.train_attn,
                train_unembed=lora.train_unembed,
            )
        )
        return await self._model_spec(client, lora)

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        if with_optimizer:
            pending = self._sdk.create_training_client_from_state_with_optimizer(path.tinker_path)
        else:
            pending = self._sdk.create_training_client_from_state(path.tinker_path)
        return await self._model_spec(await self._call(pending), None)

    async def release_model(self, model_id: str) -> None:
        """Forget the SDK client (the protocol has no call that frees a model; the server frees it
        when the session ends)."""
        self._models.pop(model_id, None)
        self._model_base.pop(model_id, None)

    # -- training ----------------------------------------------------------------------------------

    async def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        client = self._model(model_id)
        sdk_data = [convert.datum_to_sdk(d) for d in data]
        config = dict(loss_fn_config) or None
        method = client.forward_backward if backward else client.forward
        return convert.forward_backward_output_from_sdk(await self._call(method(sdk_data, loss_fn, config)))

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        response = await self._call(self._model(model_id).optim_step(convert.adam_to_sdk(params)))
        return OptimStepResponse(metrics=None if response.metrics is None else dict(response.metrics))

    # -- checkpoints -------------------------------------------------------------------------------

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        name = path.checkpoint_id.split("/", 1)[1]
        response = await self._call(self._model(model_id).save_state(name, overwrite=overwrite))
        _check_path(response.path, path)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        if overwrite:
            raise BadRequestError(
                "overwrite",
                "the Tinker protocol carries no overwrite flag for sampler weights (SDK 0.38 "
                "save_weights_for_sampler); save under a new name, or delete the old checkpoint first",
            )
        client = self._model(model_id)
        response = await self._call(client.save_weights_for_sampler(path.checkpoint_id.split("/", 1)[1]))
        _check_path(response.path, path)

    # -- sampling ----------------------------------------------------------------------------------

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        if model_id is not None:
            client = await self._call(self._model(model_id).save_weights_and_get_sampling_client())
        elif model_path is not None:
            client = await self._call(self._sdk.create_sampling_client(model_path=model_path.tinker_path))
        else:
            client = await self._call(self._sdk.create_sampling_client(base_model=base_model))
        base = str(client.get_base_model())
        tokenizer = await asyncio.to_thread(self.get_tokenizer, base)
        sampler_id = f"tinker-sampler-{uuid.uuid4().hex[:12]}"
        self._samplers[sampler_id] = client
        return SamplerSpec(
            sampler_id=sampler_id,
            base_model=base,
            vocab_size=_vocab_size(tokenizer),
            max_context_length=await self._max_context(base),
        )

    async def release_sampler(self, sampler_id: str) -> None:
        self._samplers.pop(sampler_id, None)

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        import tinker

        client = self._samplers.get(sampler_id)
        if client is None:
            raise NotFoundError(f"no sampler {sampler_id!r} on this backend")
        response = await self._call(
            client.sample(
                prompt=tinker.ModelInput.from_ints(request.prompt),
                num_samples=request.num_samples,
                sampling_params=convert.sampling_params_to_sdk(request.sampling_params),
                include_prompt_logprobs=request.include_prompt_logprobs,
                topk_prompt_logprobs=request.topk_prompt_logprobs,
                topk_sample_logprobs=request.topk_sample_logprobs,
                target_prompt_logprobs=convert.target_ids_to_sdk(request.target_prompt_ids),
                prompt_alt_tokens_k=request.prompt_alt_tokens_k,
            )
        )
        return convert.sample_response_from_sdk(response, request)


def _drop_stale_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """Work around a hang in SDK 0.38 (measured here: a 45 s ``ReadTimeout``, then a retry, in 2 of
    3 runs of a short session). Each holder the SDK builds fetches its config through a one-off
    connection pool that it drops without closing. When the garbage collector later finalizes that
    pool's asyncio transport (from whatever thread it runs on), the socket is closed but its fd
    stays in the SDK loop's selector; a later connection that gets the same fd number is then
    "registered" by a no-op modify and never sees its response. So: finalize that garbage now,
    while no request is in flight, and unregister every fd that is no longer open."""
    gc.collect()

    async def purge() -> None:
        selector = getattr(loop, "_selector", None)
        if selector is None:
            return
        for key in list(selector.get_map().values()):
            try:
                os.fstat(key.fd)
            except OSError:
                loop.remove_reader(key.fd)
                loop.remove_writer(key.fd)

    asyncio.run_coroutine_threadsafe(purge(), loop).result(timeout=30)


def _builtin_tokenizer(base_model: str) -> Tokenizer | None:
    """The tokenizer of a model of tinker-std's ``mock`` or ``minimal`` backend (``mock/tiny``,
    ``minimal/byte-lm``), which no hub or folder holds: a server that serves one of them in another
    process (``tinker-std serve --backend mock``) names the model in ``get_info``, and its byte
    tokenizer is that backend package's. ``None`` for any other name."""
    from tinker_std.backends import minimal, mock
    from tinker_std.backends.mock.model import MODELS

    if base_model in MODELS:
        return mock.ByteTokenizer(name_or_path=base_model)
    if base_model == minimal.MODEL_NAME:
        return minimal.ByteTokenizer()
    return None


def _vocab_size(tokenizer: Tokenizer) -> int:
    """The vocabulary size, which the protocol does not carry: ``len(tokenizer)`` (Hugging Face and
    tinker-std tokenizers count every id), else its ``vocab_size``. A tokenizer with neither gives
    no bound here: the server's own validation then rejects an id outside its vocabulary, with the
    same ``BadRequestError`` and field, when the request runs."""
    try:
        return len(tokenizer)  # type: ignore[arg-type]
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
        return size if isinstance(size, int) and size > 0 else 2**31 - 1


def _mapped(exc: BaseException) -> BaseException:
    mapped = to_std_error(exc)
    return exc if mapped is None else mapped


def _check_path(saved: str, wanted: ParsedCheckpointTinkerPath) -> None:
    if saved != wanted.tinker_path:
        raise RequestFailedError(
            f"the server saved the checkpoint at {saved}, not at {wanted.tinker_path}: its model ids are not "
            "the training run ids of its tinker:// paths",
            category="server",
        )


class TinkerMockBackend(TinkerBackend):
    """``TinkerBackend(serve="mock")``: the mock backend behind a loopback tinker-std server. Declares
    what ``mock`` declares that the protocol carries, in mock's tolerance class."""

    name: ClassVar[str] = "tinker (mock)"
    capabilities: ClassVar[Capabilities] = Capabilities(optional=PROTOCOL_CAPABILITIES, tolerance="mock")
    default_serve: ClassVar[str | None] = "mock"


class TinkerTorchBackend(TinkerBackend):
    """``TinkerBackend(serve="torch")``: the torch backend behind a loopback tinker-std server (CPU,
    float32). Declares what ``torch`` declares that the protocol carries."""

    name: ClassVar[str] = "tinker (torch)"
    capabilities: ClassVar[Capabilities] = Capabilities(optional=PROTOCOL_CAPABILITIES, tolerance="fp32")
    default_serve: ClassVar[str | None] = "torch"
