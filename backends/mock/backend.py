"""``MockBackend``: the in-process reference backend, and the worked example of writing one.

It serves tiny float64 causal LMs (``model.py``) with a byte tokenizer (``tokenizer.py``), trains
LoRA adapters (``lora.py``) with the shared loss and AdamW code of ``tinker_std.training_math``, samples
with a KV-cached decode loop (``sampler.py``) and stores checkpoints through
``tinker_std.checkpoints.CheckpointStore`` (``storage.py``). Everything is deterministic and
starts instantly, so it backs the conformance suite and fast tests. It declares every optional
capability, with the ``mock`` tolerance class.

State: training models by ``model_id`` (adapter + ``torch.optim.AdamW(foreach=False)`` over
only the adapter), samplers by ``sampler_id`` (base model + frozen adapter or none). Base
weights are built once per process and shared read-only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from tinker_std.backend import (
    AdapterState,
    Backend,
    GradientSnapshot,
    ModelSpec,
    SampleRequest,
    SamplerSpec,
    Tokenizer,
    new_model_id,
)
from tinker_std.capabilities import Capabilities
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, ContextLengthError, NotFoundError
from tinker_std.limits import check_rank_for_width
from tinker_std.training_math import DatumLoss, adamw_step, run_forward_backward, target_logprobs
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
)

from . import sampler, storage
from .lora import LoraAdapter
from .model import DTYPE, MODELS, BaseWeights, KVCache, base_weights, forward, model_config
from .tokenizer import ByteTokenizer

__all__ = ["MockBackend"]

Array = npt.NDArray[np.floating[Any]]


@dataclass
class _TrainingModel:
    spec: ModelSpec
    base: BaseWeights
    adapter: LoraAdapter
    optimizer: torch.optim.AdamW


@dataclass(frozen=True)
class _Sampler:
    spec: SamplerSpec
    base: BaseWeights
    adapter: LoraAdapter | None


class MockBackend(Backend):
    """Deterministic in-process backend over tiny float64 models (``mock/tiny``).

    Options: ``checkpoint_dir`` (root of the ``CheckpointStore``; its default when ``None``).
    Unknown options raise ``TypeError``. The store is public as ``checkpoint_store``, which is how
    the client layer offers checkpoint management (``RestClient``) over it.
    """

    name: ClassVar[str] = "mock"
    capabilities: ClassVar[Capabilities] = Capabilities.everything(tolerance="mock")
    one_pass_datum_loss: ClassVar[bool] = True  # forward_backward_datum_loss: CLG-4

    def __init__(self, *, checkpoint_dir: str | Path | None = None) -> None:
        self.checkpoint_store = CheckpointStore(checkpoint_dir)
        self._models: dict[str, _TrainingModel] = {}
        self._samplers: dict[str, _Sampler] = {}

    async def close(self) -> None:
        self._models.clear()
        self._samplers.clear()

    # -- models and tokenizers -------------------------------------------------------------

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return GetServerCapabilitiesResponse(
            supported_models=[
                SupportedModel(model_name=c.name, max_context_length=c.max_context_length) for c in MODELS.values()
            ]
        )

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        model_config(base_model)
        return ByteTokenizer(name_or_path=base_model)

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        config = model_config(base_model)
        check_rank_for_width(lora.rank, config.d_model, base_model)
        adapter = LoraAdapter.fresh(lora, config)
        return self._register(base_model, adapter, None)

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        if with_optimizer and path.checkpoint_type != "training":
            raise BadRequestError(
                "path",
                f"{path.tinker_path} holds sampler weights only; load it with with_optimizer=False "
                "or pass a tinker://<run>/weights/<name> checkpoint",
            )
        base_model, adapter = storage.read_checkpoint(self.checkpoint_store, path, trainable=True)
        state = None
        if with_optimizer:
            state = storage.read_optimizer(self.checkpoint_store.directory(path))
            if state is None:
                raise BadRequestError("path", f"{path.tinker_path} has no optimizer state")
        return self._register(base_model, adapter, state)

    async def release_model(self, model_id: str) -> None:
        """Forget ``model_id``; releasing an unknown or already released id is a no-op."""
        self._models.pop(model_id, None)

    # -- training ------------------------------------------------------------------------------

    async def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        return self._pass(model_id, data, loss_fn, loss_fn_config, backward, None)

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        """The one-pass seam (CLG-4): ``loss`` in place of a built-in loss, in the same pass."""
        return self._pass(model_id, data, "custom", {}, backward, loss)

    def _pass(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
        datum_loss: DatumLoss | None,
    ) -> ForwardBackwardOutput:
        model = self._model(model_id)

        def logprob_fn(batch: Sequence[Datum]) -> list[torch.Tensor]:
            # One forward per datum: a datum's numbers never depend on the rest of the batch.
            out = []
            for i, datum in enumerate(batch):
                tokens = datum.model_input.to_ints()
                targets = datum.loss_fn_inputs["target_tokens"].to_torch().long()
                if len(tokens) > model.spec.max_context_length:
                    raise ContextLengthError(
                        f"data[{i}].model_input",
                        f"{len(tokens)} tokens exceed the context of {model.spec.max_context_length}",
                    )
                if not tokens:
                    out.append(torch.zeros(targets.shape, dtype=DTYPE))
                    continue
                out.append(target_logprobs(forward(model.base, tokens, model.adapter), targets))
            return out

        return run_forward_backward(logprob_fn, data, loss_fn, loss_fn_config, backward, datum_loss)

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        return adamw_step(self._model(model_id).optimizer, params)

    async def gradient_snapshot(self, model_id: str) -> GradientSnapshot:
        """Copies of the adapter's ``.grad`` tensors (``None`` where no gradient is pending)."""
        return {n: None if p.grad is None else p.grad.clone() for n, p in self._model(model_id).adapter.params.items()}

    async def restore_gradient(self, model_id: str, snapshot: GradientSnapshot) -> None:
        assert isinstance(snapshot, dict)
        for name, p in self._model(model_id).adapter.params.items():
            p.grad = snapshot[name]

    async def read_state(self, model_id: str) -> AdapterState:
        model = self._model(model_id)

        def array(tensor: torch.Tensor | None, like: torch.Tensor) -> Array:
            source = torch.zeros_like(like) if tensor is None else tensor
            return source.detach().to(torch.float64).numpy().copy()

        params = model.adapter.params
        state = {name: model.optimizer.state.get(p, {}) for name, p in params.items()}
        return AdapterState(
            weights={name: array(p, p) for name, p in params.items()},
            grads={name: array(p.grad, p) for name, p in params.items()},
            exp_avg={name: array(state[name].get("exp_avg"), p) for name, p in params.items()},
            exp_avg_sq={name: array(state[name].get("exp_avg_sq"), p) for name, p in params.items()},
            step=max((int(s["step"]) for s in state.values() if "step" in s), default=0),
        )

    # -- checkpoints ---------------------------------------------------------------------------

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        model = self._model(model_id)
        meta = storage.metadata(model.spec.base_model, model.spec.lora, path, "training")
        with self.checkpoint_store.writing(path, overwrite, meta) as folder:
            storage.write_adapter(folder, model.adapter)
            storage.write_optimizer(folder, model.optimizer, model.adapter)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        model = self._model(model_id)
        meta = storage.metadata(model.spec.base_model, model.spec.lora, path, "sampler")
        with self.checkpoint_store.writing(path, overwrite, meta) as folder:
            storage.write_adapter(folder, model.adapter)

    # -- sampling ------------------------------------------------------------------------------

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        if sum(arg is not None for arg in (base_model, model_path, model_id)) != 1:
            raise BadRequestError("create_sampler", "give exactly one of base_model, model_path, model_id")
        adapter: LoraAdapter | None = None
        if model_path is not None:
            base_model, adapter = storage.read_checkpoint(self.checkpoint_store, model_path, trainable=False)
        elif model_id is not None:
            training = self._model(model_id)
            base_model, adapter = training.spec.base_model, training.adapter.snapshot()
        assert base_model is not None
        base = base_weights(base_model)
        spec = SamplerSpec(
            sampler_id=new_model_id("mock-sampler"),
            base_model=base_model,
            vocab_size=base.config.vocab_size,
            max_context_length=base.config.max_context_length,
        )
        self._samplers[spec.sampler_id] = _Sampler(spec=spec, base=base, adapter=adapter)
        return spec

    async def release_sampler(self, sampler_id: str) -> None:
        self._samplers.pop(sampler_id, None)

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        state = self._samplers.get(sampler_id)
        if state is None:
            raise NotFoundError(f"sampler {sampler_id!r} does not exist")

        def model_fn(tokens: list[int], cache: KVCache) -> torch.Tensor:
            return forward(state.base, tokens, state.adapter, cache)

        with torch.no_grad():
            return sampler.sample(model_fn, request, state.spec, ByteTokenizer(state.spec.base_model))

    # -- helpers -------------------------------------------------------------------------------

    def _model(self, model_id: str) -> _TrainingModel:
        model = self._models.get(model_id)
        if model is None:
            raise NotFoundError(f"training model {model_id!r} does not exist (or was released)")
        return model

    def _register(
        self, base_model: str, adapter: LoraAdapter, optimizer_state: storage.OptimizerState | None
    ) -> ModelSpec:
        base = base_weights(base_model)
        optimizer = torch.optim.AdamW(adapter.parameters(), foreach=False)
        if optimizer_state is not None:
            storage.restore_optimizer(optimizer, adapter, optimizer_state)
        spec = ModelSpec(
            model_id=new_model_id("mock"),
            base_model=base_model,
            vocab_size=base.config.vocab_size,
            max_context_length=base.config.max_context_length,
            lora=adapter.config,
        )
        self._models[spec.model_id] = _TrainingModel(spec=spec, base=base, adapter=adapter, optimizer=optimizer)
        return spec
