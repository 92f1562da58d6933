"""The independent provider: engine calls of ``tinker_std.backend.Backend`` from torch's own ops.

Written as a third party would, from README, spec/ and spec/implementing-a-backend.md, without
``tinker_std.engine`` or ``tinker_std.losses``: ``F.log_softmax`` for target logprobs, the spec's
loss formulas (``losses.py``), ``torch.optim.AdamW`` after ``torch.nn.utils.clip_grad_norm_`` for
``optim_step`` (OPT-3, OPT-4), a decode loop of its own (``sampling.py``). Checkpoint folders go
through ``tinker_std.checkpoints.CheckpointStore`` as the guide recommends.

Two variants: ``IndependentBackend`` computes in float32 (class ``fp32``),
``IndependentBf16Backend`` runs the model in bfloat16 with float32 adapter master weights and
float32 AdamW (class ``bf16``). Neither declares ``deterministic``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tinker_std.backend import AdapterState, Backend, ModelSpec, SampleRequest, SamplerSpec, Tokenizer, new_model_id
from tinker_std.capabilities import Capabilities
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, NonFiniteError, NotFoundError
from tinker_std.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
    SupportedModel,
    TensorData,
)

from .losses import datum_loss
from .model import CONTEXT, MODEL_NAME, VOCAB_SIZE, Adapter, CharTokenizer, logits_of
from .sampling import generate, prompt_logprob_rows

__all__ = ["IndependentBackend", "IndependentBf16Backend"]

_OPTIONAL = frozenset(
    {
        "loss:cispo",
        "loss:dro",
        "loss:gspo",
        "soft_targets",
        "introspection",
        "seeded_sampling",
        "topk_prompt_logprobs",
        "checkpoint_management",
    }
)
_BACKENDS = ("independent-fp32", "independent-bf16")


@dataclass
class _Model:
    spec: ModelSpec
    adapter: Adapter
    optimizer: torch.optim.AdamW


class IndependentBackend(Backend):
    """A two-layer float32 transformer with LoRA; options: ``checkpoint_dir``."""

    name: ClassVar[str] = "independent-fp32"
    capabilities: ClassVar[Capabilities] = Capabilities(optional=_OPTIONAL, tolerance="fp32")
    dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, *, checkpoint_dir: str | Path | None = None) -> None:
        self.checkpoint_store = CheckpointStore(checkpoint_dir)
        self._models: dict[str, _Model] = {}
        self._samplers: dict[str, Adapter | None] = {}

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return GetServerCapabilitiesResponse(
            supported_models=[SupportedModel(model_name=MODEL_NAME, max_context_length=CONTEXT)]
        )

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        _check_model(base_model)
        return CharTokenizer()

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        _check_model(base_model)
        return self._register(Adapter.fresh(lora), None)

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        if with_optimizer and path.checkpoint_type != "training":
            raise BadRequestError("path", f"{path.tinker_path} is a sampler checkpoint: it has no optimizer state")
        adapter = self._read_adapter(path, "path").copy(trainable=True)
        state = None
        if with_optimizer:
            state = torch.load(self.checkpoint_store.directory(path) / "optimizer.pt", weights_only=True)
        return self._register(adapter, state)

    async def release_model(self, model_id: str) -> None:
        self._models.pop(model_id, None)

    # -- training ------------------------------------------------------------------------------

    # The three numeric seams (one method each, so that tests/mutants can break exactly one).

    def _logits(self, tokens: list[int], adapter: Adapter | None) -> torch.Tensor:
        """Logits (T, V) of ``tokens`` under ``adapter`` in the compute dtype."""
        return logits_of(tokens, adapter, self.dtype)

    def _datum_loss(
        self, loss_fn: str, lp: torch.Tensor, inputs: Mapping[str, TensorData], config: Mapping[str, float]
    ) -> torch.Tensor:
        """One datum's loss (LOSS-2..LOSS-7); the call's loss is the sum over datums (LOSS-1)."""
        return datum_loss(loss_fn, lp, inputs, config)

    def _target_logprobs(self, datum: Datum, adapter: Adapter) -> torch.Tensor:
        logits = self._logits(datum.model_input.to_ints(), adapter)
        logp = F.log_softmax(logits.float(), dim=-1)  # (N, V), float32 whatever the compute dtype
        targets = torch.as_tensor(datum.loss_fn_inputs["target_tokens"].to_numpy(), dtype=torch.long)
        if targets.ndim == 1:
            return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logp.gather(-1, targets)  # (N, K) soft targets

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        model = self._model(model_id)
        outputs: list[dict[str, TensorData]] = []
        total = 0.0
        with torch.set_grad_enabled(backward):
            losses = []
            for i, datum in enumerate(data):  # one pass per datum: outputs never depend on the batch (FB-6)
                lp = self._target_logprobs(datum, model.adapter)
                loss = self._datum_loss(loss_fn, lp, datum.loss_fn_inputs, loss_fn_config)
                if not torch.isfinite(loss.detach()):  # FB-15: refused before any gradient is accumulated
                    raise NonFiniteError("loss_fn_inputs", f"the loss of datum {i} is not finite ({float(loss)})")
                losses.append(loss)
                outputs.append({"logprobs": TensorData.from_numpy(lp.detach().numpy().astype(np.float32))})
            for loss in losses:
                if backward:
                    loss.backward()  # type: ignore[no-untyped-call]  # .grad accumulates: a sum over datums and calls (FB-4)
                total += float(loss.detach().double())
        return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics={"loss:sum": total})

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        model = self._model(model_id)
        tensors = list(model.adapter.params.values())
        for p in tensors:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # a missing gradient counts as zero (OPT-7)
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in tensors])))
        if not math.isfinite(norm):  # OPT-10: nothing changes but the unusable gradient, discarded
            for p in tensors:
                p.grad = None
            raise NonFiniteError("gradient", f"the gradient norm is not finite ({norm})")
        if params.grad_clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(tensors, params.grad_clip_norm))
        for group in model.optimizer.param_groups:
            group.update(
                lr=params.learning_rate,
                betas=(params.beta1, params.beta2),
                eps=params.eps,
                weight_decay=params.weight_decay,
            )
        model.optimizer.step()
        for p in tensors:
            p.grad = None
        step = int(model.optimizer.state[tensors[0]]["step"]) if tensors else 0
        return OptimStepResponse(metrics={"grad_norm:max": norm, "step:max": float(step)})

    async def read_state(self, model_id: str) -> AdapterState:
        model = self._model(model_id)
        params = model.adapter.params

        def moment(p: torch.Tensor, key: str) -> np.ndarray:
            state = model.optimizer.state.get(p, {})
            return state[key].detach().numpy().copy() if key in state else np.zeros(tuple(p.shape), np.float32)

        first = next(iter(params.values()), None)
        step = int(model.optimizer.state.get(first, {}).get("step", 0)) if first is not None else 0
        return AdapterState(
            weights={n: p.detach().numpy().copy() for n, p in params.items()},
            grads={
                n: np.zeros(tuple(p.shape), np.float32) if p.grad is None else p.grad.detach().numpy().copy()
                for n, p in params.items()
            },
            exp_avg={n: moment(p, "exp_avg") for n, p in params.items()},
            exp_avg_sq={n: moment(p, "exp_avg_sq") for n, p in params.items()},
            step=step,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def _write(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool, with_optimizer: bool) -> None:
        model = self._model(model_id)
        meta = {"backend": self.name, "base_model": model.spec.base_model, "lora": model.spec.lora.model_dump()}
        with self.checkpoint_store.writing(path, overwrite, meta) as folder:
            torch.save({n: p.detach().clone() for n, p in model.adapter.params.items()}, folder / "adapter.pt")
            if with_optimizer:
                torch.save(model.optimizer.state_dict(), folder / "optimizer.pt")

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        self._write(model_id, path, overwrite, with_optimizer=True)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        self._write(model_id, path, overwrite, with_optimizer=False)

    def _read_adapter(self, path: ParsedCheckpointTinkerPath, field: str) -> Adapter:
        meta = self.checkpoint_store.read_metadata(path)
        if meta.get("backend") not in _BACKENDS:
            raise BadRequestError(field, f"{path.tinker_path} was written by backend {meta.get('backend')!r}")
        tensors = torch.load(self.checkpoint_store.directory(path) / "adapter.pt", weights_only=True)
        return Adapter(LoraConfig.model_validate(meta["lora"]), dict(tensors))

    # -- sampling ------------------------------------------------------------------------------

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        adapter = None
        if base_model is not None:
            _check_model(base_model)
        elif model_path is not None:
            adapter = self._read_adapter(model_path, "model_path")
        elif model_id is not None:
            adapter = self._model(model_id).adapter.copy(trainable=False)  # a snapshot (SMP-14)
        spec = SamplerSpec(new_model_id("independent-sampler"), MODEL_NAME, VOCAB_SIZE, CONTEXT)
        self._samplers[spec.sampler_id] = adapter
        return spec

    async def release_sampler(self, sampler_id: str) -> None:
        self._samplers.pop(sampler_id, None)

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        if sampler_id not in self._samplers:
            raise NotFoundError(f"sampler {sampler_id!r} does not exist")
        adapter = self._samplers[sampler_id]
        params, prompt = request.sampling_params, list(request.prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else CONTEXT - len(prompt)
        with torch.no_grad():

            def logits_fn(tokens: list[int]) -> torch.Tensor:
                return self._logits(tokens, adapter)

            sequences = [generate(logits_fn, prompt, params, max_tokens, j) for j in range(request.num_samples)]
            lps, tops = None, None
            if request.include_prompt_logprobs or request.topk_prompt_logprobs > 0:
                lps, tops = prompt_logprob_rows(
                    logits_fn(prompt), prompt, request.include_prompt_logprobs, request.topk_prompt_logprobs
                )
        return SampleResponse(sequences=sequences, prompt_logprobs=lps, topk_prompt_logprobs=tops)

    # -- helpers -------------------------------------------------------------------------------

    def _model(self, model_id: str) -> _Model:
        if model_id not in self._models:
            raise NotFoundError(f"training model {model_id!r} does not exist")
        return self._models[model_id]

    def _register(self, adapter: Adapter, optimizer_state: dict[str, Any] | None) -> ModelSpec:
        optimizer = torch.optim.AdamW(list(adapter.params.values()), foreach=False)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        spec = ModelSpec(new_model_id("independent"), MODEL_NAME, VOCAB_SIZE, CONTEXT, adapter.config)
        self._models[spec.model_id] = _Model(spec, adapter, optimizer)
        return spec


class IndependentBf16Backend(IndependentBackend):
    """The same provider with a bfloat16 forward pass; declares class ``bf16``."""

    name: ClassVar[str] = "independent-bf16"
    capabilities: ClassVar[Capabilities] = Capabilities(optional=_OPTIONAL, tolerance="bf16")
    dtype: ClassVar[torch.dtype] = torch.bfloat16


def _check_model(base_model: str) -> None:
    if base_model != MODEL_NAME:
        raise NotFoundError(f"base model {base_model!r} is not served; supported models: [{MODEL_NAME}]")
