"""``ModalBackend``: the user's loop runs here, the torch engine in Modal containers on cloud GPUs.

Each backend call becomes one call of a ``@modal.method`` of ``TinkerStdTrainer`` (``app.py``), its
arguments and result encoded by ``wire.py``. The client layer already sends the calls of one
training model one at a time in submission order, so ordering and gradient accumulation hold across
the network as they do in-process; calls of different models overlap. Sampling is spawned
(``.spawn`` then ``FunctionCall.get``) so concurrent requests fan out to the container together
and are batched there by the engine. Calls are routed by base model: one container
(``max_containers=1``) per base model holds every client of that model, sharing its weights.

Three ways to reach the class: a deployed app (default; ``tinker-std modal deploy``, found with
``modal.Cls.from_name``), an ephemeral app run for the life of the client (``ephemeral=True``),
or in this process without Modal's servers (``offline=True`` or ``TINKER_STD_MODAL_OFFLINE=1``:
the real class through Modal's ``.local()``, payloads pickled as on the wire; tests and CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tinker_std.backend import AdapterState, Backend, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.capabilities import Precision, PrecisionVariants
from tinker_std.errors import NotFoundError, RequestFailedError, TinkerError
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

from ..torch.backend import TORCH_OPTIONAL_CAPABILITIES
from . import wire
from .errors import ContainerLostError, require_credentials, require_modal
from .handles import DeployedApp, EphemeralApp, HandleFactory, LocalApp
from .settings import APP_NAME, CHECKPOINT_MOUNT
from .wire import Payload

__all__ = ["MODAL_OPTIONAL_CAPABILITIES", "ModalBackend", "ModalBackendFP32", "ModalBackendBF16", "offline_from_env"]

#: As ``torch`` declares, less ``checkpoint_management``: the checkpoints live on a Modal Volume,
#: listed and downloaded with Modal's tools (docs/modal.md), not through a local store. The
#: sampling extras (SDK-6/7/8) cross the wire (``wire.encode_sample_request``) to the same engine.
MODAL_OPTIONAL_CAPABILITIES = TORCH_OPTIONAL_CAPABILITIES - {"checkpoint_management"}


def _env(name: str) -> str | None:
    return os.environ.get(f"TINKER_STD_MODAL_{name}") or None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def offline_from_env() -> bool:
    """``TINKER_STD_MODAL_OFFLINE`` is set to 1/true/yes."""
    return _truthy(_env("OFFLINE"))


class ModalBackend(PrecisionVariants, Backend):
    """The torch engine in Modal containers.

    Options (each not given falls back to ``$TINKER_STD_MODAL_<NAME>``, e.g. ``TINKER_STD_MODAL_GPU``,
    ``TINKER_STD_MODAL_MODELS`` as a comma-separated list, so CLI recipes configure it too): ``gpu``
    (Modal GPU type, default ``"H100"``), ``gpu_count`` (default 1), ``region``
    (Modal region, default anywhere), ``app_name`` (the deployed app, default ``"tinker-std"``),
    ``environment_name`` (Modal environment), ``ephemeral`` (run the package's app for the life of
    the client instead of using the deployed one), ``offline`` (no Modal servers: run the class
    in-process; default ``$TINKER_STD_MODAL_OFFLINE``), ``models`` (base models to list; the first
    is the default; hub names are downloaded into the models Volume by the container), ``dtype``
    (default bfloat16 on a GPU, float32 offline), ``max_context_length``, ``batching`` (as on
    ``torch``), ``checkpoint_dir`` (offline: a local folder; remote: a folder inside the checkpoint
    Volume, default its root), ``max_inputs`` (offline: concurrent calls, as ``@modal.concurrent``).

    Without Modal credentials (and not offline) construction raises ``ModalCredentialsError`` at
    once, saying what to set. Capabilities: the class ``ModalBackend`` declares what the offline
    path (CPU, float32, bit-exact replays) meets; a GPU deployment is ``ModalBackendBF16`` (or
    ``ModalBackendFP32`` with ``dtype="float32"``), picked at construction, and those are the
    classes to name when running the conformance suite against Modal GPUs.
    """

    name: ClassVar[str] = "modal"
    optional_capabilities: ClassVar[frozenset[str]] = MODAL_OPTIONAL_CAPABILITIES

    @classmethod
    def precision_for(cls, options: Mapping[str, Any]) -> Precision:
        """Offline: the CPU (``cpu``); on Modal GPUs ``fp32`` for ``dtype="float32"``, else ``bf16``."""
        offline = options.get("offline")
        if offline_from_env() if offline is None else offline:
            return "cpu"
        dtype = str(options.get("dtype") or "bfloat16").replace("torch.", "")
        return "fp32" if dtype == "float32" else "bf16"

    def __init__(
        self,
        *,
        gpu: str | None = None,
        gpu_count: int | None = None,
        region: str | None = None,
        app_name: str | None = None,
        environment_name: str | None = None,
        ephemeral: bool | None = None,
        offline: bool | None = None,
        models: Sequence[str] | None = None,
        dtype: str | None = None,
        max_context_length: int | None = None,
        batching: str = "auto",
        checkpoint_dir: str | os.PathLike[str] | None = None,
        max_inputs: int = 8,
    ) -> None:
        require_modal()
        self.offline = offline_from_env() if offline is None else bool(offline)
        if not self.offline:
            require_credentials()
        gpu = gpu or _env("GPU") or "H100"
        gpu_count = gpu_count if gpu_count is not None else int(_env("GPU_COUNT") or 1)
        region = region or _env("REGION")
        app_name = app_name or _env("APP_NAME") or APP_NAME
        environment_name = environment_name or _env("ENVIRONMENT")
        ephemeral = ephemeral if ephemeral is not None else _truthy(_env("EPHEMERAL"))
        if models is None and _env("MODELS"):
            models = [name.strip() for name in str(_env("MODELS")).split(",") if name.strip()]
        if gpu_count < 1:
            raise ValueError(f"gpu_count must be >= 1, got {gpu_count}")
        gpu_spec = gpu if gpu_count == 1 else f"{gpu}:{gpu_count}"
        self.factory: HandleFactory
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if self.offline:
            self.factory = LocalApp(max_inputs=max_inputs)
            self._scratch = (
                None if checkpoint_dir is not None else tempfile.TemporaryDirectory(prefix="tinker-std-modal-offline-")
            )
            self._checkpoint_dir = str(checkpoint_dir) if self._scratch is None else self._scratch.name
        else:
            self.factory = (
                EphemeralApp(gpu_spec, region)
                if ephemeral
                else DeployedApp(app_name, gpu_spec, region, environment_name)
            )
            sub = str(checkpoint_dir or "").strip("/")
            self._checkpoint_dir = f"{CHECKPOINT_MOUNT}/{sub}" if sub else ""
        options: dict[str, Any] = {"batching": batching}
        if models:
            options["models"] = list(models)
        if dtype is not None:
            options["dtype"] = dtype
        if max_context_length is not None:
            options["max_context_length"] = max_context_length
        if self.offline:
            options["device"] = "cpu"
        self._engine_options = json.dumps(options, sort_keys=True)
        self.default_model = models[0] if models else "tiny-llama"
        self._open_lock = threading.Lock()
        self._opened = False
        self._handles: dict[str, Any] = {}
        self._base_of: dict[str, str] = {}  # model id / sampler id / training run id -> base model
        self._instance_of: dict[str, str] = {}  # model id / sampler id -> container instance
        self._tokenizers: dict[str, Tokenizer] = {}

    # -- handles and calls -------------------------------------------------------------------------

    def _open(self) -> None:
        with self._open_lock:
            if not self._opened:
                self.factory.open()
                self._opened = True

    def handle(self, base_model: str) -> Any:
        """The class instance (one container) serving ``base_model``."""
        self._open()
        with self._open_lock:
            if base_model not in self._handles:
                self._handles[base_model] = self.factory.handle(base_model, self._checkpoint_dir, self._engine_options)
            return self._handles[base_model]

    def _unwrap(self, envelope: Payload, owner: str | None, kind: str) -> Any:
        instance = envelope["instance"]
        if "error" in envelope:
            error = wire.decode_error(envelope["error"])
            known = self._instance_of.get(owner) if owner is not None else None
            if isinstance(error, NotFoundError) and known is not None and known != instance:
                assert owner is not None
                raise ContainerLostError(kind, owner, known, instance) from error
            raise error
        return envelope["result"]

    def _call_sync(self, base_model: str, method: str, payload: Payload, spawn: bool = False) -> Payload:
        target = getattr(self.handle(base_model), method)
        try:
            if spawn:
                return target.spawn(payload).get()  # type: ignore[no-any-return]
            return target.remote(payload)  # type: ignore[no-any-return]
        except TinkerError:
            raise
        except Exception as exc:  # Modal's own errors (network, timeouts, a container lost mid-call)
            raise RequestFailedError(
                f"Modal call {method} failed: {type(exc).__name__}: {exc}. If the container was preempted or "
                "scaled down, its in-memory state is gone: re-create training clients from their last checkpoint.",
                category="server",
            ) from exc

    async def _call(
        self,
        base_model: str,
        method: str,
        payload: Payload,
        *,
        owner: str | None = None,
        kind: str = "",
        spawn: bool = False,
    ) -> Any:
        envelope = await asyncio.to_thread(self._call_sync, base_model, method, payload, spawn)
        return self._unwrap(envelope, owner, kind)

    def _base(self, object_id: str, kind: str) -> str:
        base = self._base_of.get(object_id)
        if base is None:
            raise NotFoundError(f"unknown {kind} {object_id!r}")
        return base

    async def _checkpoint_base(self, path: ParsedCheckpointTinkerPath) -> str:
        known = self._base_of.get(path.training_run_id)
        if known is not None:
            return known
        base = next(iter(self._handles), self.default_model)  # any container reads the Volume
        result = await self._call(base, "checkpoint_base_model", {"path": wire.encode_path(path)})
        return str(result["base_model"])

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        await asyncio.to_thread(self.factory.close)
        if self._scratch is not None:
            self._scratch.cleanup()

    # -- models and tokenizers ---------------------------------------------------------------------

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        # Ask a container that is already up, so that listing models does not start another GPU.
        base = next(iter(self._handles), self.default_model)
        return wire.decode_capabilities(await self._call(base, "get_server_capabilities", {}))

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        """The container's tokenizer, shipped once as files and loaded here with transformers."""
        tokenizer = self._tokenizers.get(base_model)
        if tokenizer is None:
            envelope = self._call_sync(base_model, "tokenizer_files", {"base_model": base_model})
            files: dict[str, bytes] = self._unwrap(envelope, None, "")["files"]
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory(prefix="tinker-std-modal-tokenizer-") as tmp:
                for name, data in files.items():
                    (Path(tmp) / Path(name).name).write_bytes(data)
                loaded: Tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)  # type: ignore[assignment]
            self._tokenizers[base_model] = tokenizer = loaded
        return tokenizer

    async def _spec_call(self, base_model: str, method: str, payload: Payload) -> ModelSpec:
        envelope = await asyncio.to_thread(self._call_sync, base_model, method, payload)
        spec = wire.decode_model_spec(self._unwrap(envelope, None, "training model"))
        self._base_of[spec.model_id] = base_model
        self._instance_of[spec.model_id] = envelope["instance"]
        return spec

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        return await self._spec_call(
            base_model, "create_model", {"base_model": base_model, "lora": wire.encode_lora(lora)}
        )

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        base = await self._checkpoint_base(path)
        return await self._spec_call(
            base, "load_model", {"path": wire.encode_path(path), "with_optimizer": with_optimizer}
        )

    async def release_model(self, model_id: str) -> None:
        base = self._base_of.get(model_id)
        if base is not None:
            await self._call(base, "release_model", {"model_id": model_id})

    # -- training ----------------------------------------------------------------------------------

    async def _model_call(self, model_id: str, method: str, payload: Payload) -> Any:
        return await self._call(
            self._base(model_id, "training model"),
            method,
            {"model_id": model_id, **payload},
            owner=model_id,
            kind="training model",
        )

    async def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        result = await self._model_call(
            model_id,
            "forward_backward",
            {
                "data": wire.encode_datums(data),
                "loss_fn": loss_fn,
                "loss_fn_config": {key: float(value) for key, value in loss_fn_config.items()},
                "backward": backward,
            },
        )
        return wire.decode_forward_backward_output(result)

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        result = await self._model_call(model_id, "optim_step", {"params": wire.encode_adam(params)})
        return OptimStepResponse(metrics=result["metrics"])

    async def read_state(self, model_id: str) -> AdapterState:
        return wire.decode_adapter_state(await self._model_call(model_id, "read_state", {}))

    # -- checkpoints -------------------------------------------------------------------------------

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await self._model_call(model_id, "save_state", {"path": wire.encode_path(path), "overwrite": overwrite})
        self._base_of.setdefault(path.training_run_id, self._base(model_id, "training model"))

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await self._model_call(
            model_id, "save_weights_for_sampler", {"path": wire.encode_path(path), "overwrite": overwrite}
        )
        self._base_of.setdefault(path.training_run_id, self._base(model_id, "training model"))

    # -- sampling ----------------------------------------------------------------------------------

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        if model_id is not None:
            base, owner = self._base(model_id, "training model"), model_id
        elif model_path is not None:
            base, owner = await self._checkpoint_base(model_path), None
        else:
            base, owner = str(base_model), None
        payload = {
            "base_model": base_model,
            "model_id": model_id,
            "model_path": None if model_path is None else wire.encode_path(model_path),
        }
        envelope = await asyncio.to_thread(self._call_sync, base, "create_sampler", payload)
        spec = wire.decode_sampler_spec(self._unwrap(envelope, owner, "training model"))
        self._base_of[spec.sampler_id] = base
        self._instance_of[spec.sampler_id] = envelope["instance"]
        return spec

    async def release_sampler(self, sampler_id: str) -> None:
        base = self._base_of.pop(sampler_id, None)
        self._instance_of.pop(sampler_id, None)
        if base is not None:
            await self._call(base, "release_sampler", {"sampler_id": sampler_id})

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        result = await self._call(
            self._base(sampler_id, "sampler"),
            "sample",
            {"sampler_id": sampler_id, "request": wire.encode_sample_request(request)},
            owner=sampler_id,
            kind="sampler",
            spawn=True,
        )
        return wire.decode_sample_response(result)


class ModalBackendFP32(ModalBackend, precision="fp32"):
    """``ModalBackend`` on GPUs in float32: tolerance class ``fp32``, no bit-exact replay promise."""


class ModalBackendBF16(ModalBackend, precision="bf16"):
    """``ModalBackend`` on GPUs in bfloat16 (the default there): tolerance class ``bf16``."""
