"""``TorchBackend``: the reference backend over real Hugging Face models, LoRA via ``peft``.

Transport only: every call is forwarded to a synchronous ``TorchEngine`` (``engine.py``) through
an ``EngineQueue`` (``scheduler.py``), which runs engine calls one at a time in a worker thread in
arrival order, so the event loop stays free and engine calls never overlap. Queued
``forward_backward`` requests of several clients go to the engine together
(``TorchEngine.forward_backward_many``, which may run them as one pass with per-row adapters), and
so do queued ``sample`` requests (``TorchEngine.sample_many``).

Capabilities: every optional loss, ``soft_targets``, ``introspection``, ``seeded_sampling`` and
``topk_prompt_logprobs``. On CPU in float32 (the default there) outputs are bit-exact replays, so
``TorchBackend`` also declares ``deterministic`` with tolerance class ``fp32``. Other precisions
and devices get a class whose declaration matches them, chosen at construction:
``TorchBackendFP32`` (float32 off CPU: ``fp32``, no determinism promise) and ``TorchBackendBF16``
(bfloat16/float16: ``bf16``). Pass those classes by ``module:Class`` to read their capabilities
without constructing them (for example to run the conformance suite on a GPU).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from tinker_std.backend import AdapterState, Backend, GradientSnapshot, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.capabilities import Precision, PrecisionVariants
from tinker_std.checkpoints import CheckpointStore
from tinker_std.training_math import DatumLoss
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

from .batching import BatchingMode
from .engine import DEFAULT_RESIDENT_MODELS, TorchEngine
from .engine_protocol import Engine, ForwardBackwardJob
from .precision import precision_of
from .scheduler import EngineQueue

__all__ = ["TORCH_OPTIONAL_CAPABILITIES", "TorchBackend", "TorchBackendBF16", "TorchBackendFP32"]

T = TypeVar("T")

#: The optional capabilities every backend on the torch engine declares at every precision
#: (float32 on the CPU adds ``deterministic``; ``PrecisionVariants``).
TORCH_OPTIONAL_CAPABILITIES = frozenset(
    {
        "loss:cispo",
        "loss:dro",
        "loss:gspo",
        "loss:stable_reinforce",
        "soft_targets",
        "introspection",
        "seeded_sampling",
        "topk_prompt_logprobs",
        "topk_sample_logprobs",
        "target_prompt_logprobs",
        "prompt_alt_tokens",
        "checkpoint_management",
    }
)


class TorchBackend(PrecisionVariants, Backend):
    """Hugging Face causal LMs with one peft LoRA adapter per training client.

    Options (all keyword, all optional): ``checkpoint_dir`` (root of the ``CheckpointStore``),
    ``device`` (default ``cuda`` when available, else ``cpu``), ``dtype`` (default float32 on CPU,
    bfloat16 elsewhere), ``models`` (extra base-model names or local paths to list in
    ``get_server_capabilities``; the built-ins ``tiny-llama`` and ``tiny-qwen3`` are always listed,
    ``tiny-llama`` first), ``max_context_length`` (a cap on every model's context length),
    ``batching`` (``"auto"``, ``"batched"`` or ``"serial"``: how concurrent ``forward_backward``
    requests of several clients run, see ``TorchEngine``), ``resident_models`` (default
    ``DEFAULT_RESIDENT_MODELS``: how many idle training models keep their adapter and AdamW state in
    memory; the others' state waits in files under ``checkpoint_dir``, bit-equal when it comes
    back; ``None``: all stay in memory). Unknown options raise ``TypeError``.

    ``engine``: an ``Engine`` (``engine_protocol.py``) built elsewhere, to serve instead of a
    ``TorchEngine`` built from the options above (which must then be left out, ``batching`` too;
    the checkpoint store is the engine's): the seam the fsdp backend plugs its ``RankEngine`` into.
    The engine is public as ``engine`` (for example ``backend.engine.export_merged(model_id,
    folder)`` on a ``TorchEngine``), the store as ``checkpoint_store``.
    """

    name: ClassVar[str] = "torch"
    optional_capabilities: ClassVar[frozenset[str]] = TORCH_OPTIONAL_CAPABILITIES
    one_pass_datum_loss: ClassVar[bool] = True  # forward_backward_datum_loss: CLG-4
    #: the decode loop reports each token to ``SampleRequest.on_tokens`` (``decode._take_tokens``)
    incremental_decode: ClassVar[bool] = True

    @classmethod
    def precision_for(cls, options: Mapping[str, Any]) -> Precision:
        engine = options.get("engine")
        if engine is not None:
            return engine.precision  # type: ignore[no-any-return]
        return precision_of(options.get("device"), options.get("dtype"))

    def __init__(
        self,
        *,
        checkpoint_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        models: Sequence[str] | None = None,
        max_context_length: int | None = None,
        batching: BatchingMode = "auto",
        resident_models: int | None = DEFAULT_RESIDENT_MODELS,
        engine: Engine | None = None,
    ) -> None:
        if engine is None:
            self.checkpoint_store = CheckpointStore(checkpoint_dir)
            engine = TorchEngine(
                self.checkpoint_store,
                device=device,
                dtype=dtype,
                models=models,
                max_context_length=max_context_length,
                batching=batching,
                resident_models=resident_models,
            )
        else:
            defaults = (
                ("checkpoint_dir", checkpoint_dir, None),
                ("device", device, None),
                ("dtype", dtype, None),
                ("models", models, None),
                ("max_context_length", max_context_length, None),
                ("batching", batching, "auto"),
                ("resident_models", resident_models, DEFAULT_RESIDENT_MODELS),
            )
            clashing = [name for name, value, default in defaults if value != default]
            if clashing:
                raise TypeError(f"options {clashing} configure an engine: give them to the engine passed as engine=")
            self.checkpoint_store = engine.checkpoint_store
        self.engine: Engine = engine
        self.queue = EngineQueue(
            {"forward_backward": self.engine.forward_backward_many, "sample": self.engine.sample_many}
        )

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one engine call alone, after every request queued before it."""
        return await self.queue.call(fn, *args, **kwargs)

    async def close(self) -> None:
        await self._run(self.engine.close)

    # -- models and tokenizers -------------------------------------------------------------

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        models = await asyncio.to_thread(self.engine.supported_models)
        return GetServerCapabilitiesResponse(supported_models=models)

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        return self.engine.tokenizer(base_model)

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        return await self._run(self.engine.create_model, base_model, lora)

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        return await self._run(self.engine.load_model, path, with_optimizer)

    async def release_model(self, model_id: str) -> None:
        await self._run(self.engine.release_model, model_id)

    # -- training ------------------------------------------------------------------------------

    async def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        job = ForwardBackwardJob(model_id, data, loss_fn, loss_fn_config, backward)
        result: ForwardBackwardOutput = await self.queue.submit("forward_backward", job)
        return result

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        """The one-pass seam (CLG-4): the job runs through the engine's own forward_backward pass."""
        job = ForwardBackwardJob(model_id, data, "custom", {}, backward, loss)
        result: ForwardBackwardOutput = await self.queue.submit("forward_backward", job)
        return result

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        return await self._run(self.engine.optim_step, model_id, params)

    async def read_state(self, model_id: str) -> AdapterState:
        return await self._run(self.engine.read_state, model_id)

    async def gradient_snapshot(self, model_id: str) -> GradientSnapshot:
        return await self._run(self.engine.gradient_snapshot, model_id)

    async def restore_gradient(self, model_id: str, snapshot: GradientSnapshot) -> None:
        assert isinstance(snapshot, str)
        await self._run(self.engine.restore_gradient, model_id, snapshot)

    # -- checkpoints ---------------------------------------------------------------------------

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await self._run(self.engine.save_state, model_id, path, overwrite)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await self._run(self.engine.save_weights_for_sampler, model_id, path, overwrite)

    # -- sampling ------------------------------------------------------------------------------

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        return await self._run(
            self.engine.create_sampler, base_model=base_model, model_path=model_path, model_id=model_id
        )

    async def release_sampler(self, sampler_id: str) -> None:
        await self._run(self.engine.release_sampler, sampler_id)

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        result: SampleResponse = await self.queue.submit("sample", (sampler_id, request))
        return result


class TorchBackendFP32(TorchBackend, precision="fp32"):
    """``TorchBackend`` in float32 off CPU: tolerance class ``fp32``, no bit-exact replay promise."""


class TorchBackendBF16(TorchBackend, precision="bf16"):
    """``TorchBackend`` in bfloat16 or float16: tolerance class ``bf16``, no bit-exact replay promise."""
