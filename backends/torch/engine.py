"""``TorchEngine``: the synchronous core of the torch backend, independent of any transport.

The engine holds ONE Hugging Face base model per base-model name and any number of LoRA adapters
on it (``adapters.py``; what it holds: ``holdings.py``): one per training model (with its own
``torch.optim.AdamW``) and one per sampler that has adapter weights (a frozen copy). Its methods
are the ``Engine`` protocol (``engine_protocol.py``), mirroring the ``Backend`` contract as plain
synchronous calls with no asyncio and no threads of their own, so the same engine can be driven
by ``TorchBackend`` (one worker thread), an FSDP rank process reading commands from a pipe, or a
Modal container. It is not thread-safe: callers serialise calls (``tokenizer`` and
``supported_models`` may be called concurrently with one running call).

Numerics (spec FB, OPT): ``forward_backward`` runs micro-batches of at most ``max_batch_tokens``
padded tokens through ``forward_pass.py`` (float32 log-softmax logprobs of the target tokens,
gradients summed) and evaluates the shared losses (``tinker_std.training_math.run_forward_backward``);
several clients' requests may share one pass (``multi_tenant.py``); ``optim_step`` is
``tinker_std.training_math.adamw_step`` over the client's adapter only, after which idle clients'
state may move to files (``offload.py``, ``resident_models``). Sampling: ``sampler.py``. Which
fast paths it takes: ``settings.py`` and ``fast/README.md``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tinker_std.backend import AdapterState, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.checkpoints import CheckpointStore
from tinker_std.client.chunking import merge_outputs
from tinker_std.errors import BadRequestError, NotFoundError, TinkerError
from tinker_std.limits import check_rank_for_width
from tinker_std.losses import gradient_positions
from tinker_std.training_math import DatumLoss, adamw_step, datum_inputs, run_forward_backward
from tinker_std.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
    SupportedModel,
)

from . import adapters, export, offload, sampler, storage
from .batching import BatchingMode, PathChooser
from .engine_protocol import ForwardBackwardJob
from .environment import check_hf_stack
from .forward_pass import DEFAULT_MAX_BATCH_TOKENS, ForwardPass
from .holdings import BaseModels, LoadedBase, Sampler, TrainingModel, TrainingModels
from .multi_tenant import MultiTenant
from .placement import Placement, SingleProcess
from .precision import precision_of, resolve_device, resolve_dtype
from .settings import TorchSettings

__all__ = ["DEFAULT_RESIDENT_MODELS", "ForwardBackwardJob", "TorchEngine"]

Array = npt.NDArray[np.floating[Any]]

#: Idle training models whose state ``TorchBackend`` keeps in memory (the rest wait in files).
DEFAULT_RESIDENT_MODELS = 2


class TorchEngine:
    """Base models, LoRA training models and samplers, as plain synchronous calls.

    ``checkpoint_store``: where ``tinker://`` paths live. ``device`` / ``dtype``: see
    ``resolve_device`` / ``resolve_dtype``. ``models``: extra base-model names or local paths to
    list in ``supported_models`` (any locally available causal LM can be used by name anyway).
    ``max_context_length``: a cap on every model's context length. ``cache_dir``: root of the
    built-in models' cache (default ``$TINKER_STD_CACHE_DIR`` or ``~/.cache/tinker-std``).
    ``max_batch_tokens``: padded tokens per forward pass. ``batching``: how ``forward_backward_many``
    runs requests of several clients: ``"auto"`` (measure both paths, use the faster, see
    ``batching.py``), ``"batched"`` (one pass with per-row adapters) or ``"serial"`` (one pass per
    client). ``placement``: where the work runs (default ``SingleProcess``; the FSDP backend passes
    one per rank, see ``placement.py``). ``resident_models``: how many training models keep their
    adapter and AdamW state in memory when idle; after each ``optim_step`` the least recently used
    others without an accumulated gradient move to files under the checkpoint directory
    (``offload.py``) and come back, bit for bit, on their next call (``None``: never). ``settings``:
    the fast paths it may take (default ``TorchSettings.from_env()``, read here once; replace
    ``engine.settings`` to change them for later calls). Construction raises
    ``IncompatibleEnvironmentError`` when the installed transformers and peft cannot work together
    (``environment.check_hf_stack``).
    """

    def __init__(
        self,
        checkpoint_store: CheckpointStore,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        models: Sequence[str] | None = None,
        max_context_length: int | None = None,
        cache_dir: str | Path | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        batching: BatchingMode = "auto",
        placement: Placement | None = None,
        resident_models: int | None = None,
        settings: TorchSettings | None = None,
    ) -> None:
        if max_context_length is not None and max_context_length < 1:
            raise ValueError("max_context_length must be >= 1")
        if resident_models is not None and resident_models < 1:
            raise ValueError("resident_models must be >= 1 (or None: never offload)")
        check_hf_stack()
        self.checkpoint_store = checkpoint_store
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.precision = precision_of(self.device, self.dtype)
        self.max_context_length = max_context_length
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.passes = ForwardPass(self.device, settings or TorchSettings.from_env(), max_batch_tokens)
        self.placement = placement if placement is not None else SingleProcess()
        self.path_chooser = PathChooser(self.placement.forced_batching or batching)
        self.bases = BaseModels(
            self.device, self.dtype, models or [], max_context_length, self.cache_dir, self.placement.prepare_base
        )
        self._samplers: dict[str, Sampler] = {}
        idle = offload.IdleStore(checkpoint_store.root / ".offload" / uuid.uuid4().hex)
        self.training = TrainingModels(idle, resident_models)
        self._grad_snapshots: dict[str, dict[str, torch.Tensor | None]] = {}  # gradient_snapshot's copies
        self.multi_tenant = MultiTenant(
            self.passes,
            self.path_chooser,
            self.training.models,
            self._model,
            lambda job: self.forward_backward(
                job.model_id, job.data, job.loss_fn, job.loss_fn_config, job.backward, job.datum_loss
            ),
        )

    @property
    def settings(self) -> TorchSettings:
        """The fast paths this engine may take (``settings.py``)."""
        return self.passes.settings

    @settings.setter
    def settings(self, settings: TorchSettings) -> None:
        self.passes.settings = settings

    # -- base models ---------------------------------------------------------------------------

    def served_models(self) -> list[str]:
        """The listed models: the built-ins (``tiny-llama`` first), then ``models``."""
        return self.bases.served()

    def supported_models(self) -> list[SupportedModel]:
        """Every listed model with its maximum context length (loads configs, not weights)."""
        return self.bases.supported()

    def tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model`` (``NotFoundError`` when it cannot be loaded offline)."""
        return self.bases.tokenizer(base_model)

    # -- training models -----------------------------------------------------------------------

    def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        """A new training model: a fresh adapter (seeded by ``lora.seed``) and a fresh AdamW."""
        base = self.bases.get(base_model)
        check_rank_for_width(lora.rank, int(base.model.config.hidden_size), base_model)
        return self._register(base, lora, lora.seed, None, None)

    def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        """A new training model from a checkpoint; the optimizer state too when ``with_optimizer``."""
        if with_optimizer and path.checkpoint_type != "training":
            raise BadRequestError(
                "path",
                f"{path.tinker_path} holds sampler weights only; load it without the optimizer "
                "or pass a tinker://<run>/weights/<name> checkpoint",
            )
        base_model, lora, folder = storage.read_checkpoint(self.checkpoint_store, path)
        tensors = storage.read_checkpoint_adapter(path, folder)
        state = None
        if with_optimizer:
            state = storage.read_optimizer(folder)
            if state is None:
                raise BadRequestError("path", f"{path.tinker_path} has no optimizer state")
        base = self.bases.get(base_model)
        return self._register(base, lora, 0, tensors, state, path)

    def release_model(self, model_id: str) -> None:
        """Forget ``model_id`` and delete its adapter; unknown or released ids are a no-op."""
        model = self.training.pop(model_id)
        self._grad_snapshots.pop(model_id, None)
        if model is not None:
            adapters.delete_adapter(model.base.model, model.adapter)

    def forward_backward(
        self,
        model_id: str,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
        datum_loss: DatumLoss | None = None,
    ) -> ForwardBackwardOutput:
        """FB-1..FB-6 for one validated batch; with ``backward`` gradients accumulate into the
        client's adapter only. A failure leaves the accumulated gradient as it was. ``datum_loss``
        replaces ``loss_fn`` in the same single pass (the one-pass seam, CLG-4)."""
        model = self._model(model_id)
        self.passes.check_lengths(model.spec, data)
        adapters.activate(model.base.model, model.adapter, trainable=True)
        chunks = self.passes.micro_batches(data, model.base.vocab_size)
        saved = {n: None if p.grad is None else p.grad.clone() for n, p in model.params.items()} if backward else {}

        computed: list[torch.Tensor] = []

        def logprob_fn(batch: Sequence[Datum]) -> list[torch.Tensor]:
            hints = [gradient_positions(loss_fn, datum_inputs(d)) for d in batch] if backward else None
            layout = self.passes.layout(model.base, batch)
            computed[:] = self.passes.logprobs(model.base, batch, layout, [model.adapter] * len(batch), hints)
            return list(computed)

        def run_pass(chunk: Sequence[Datum]) -> ForwardBackwardOutput:
            rows = self.placement.rows(chunk)
            if not rows:
                self.placement.idle_pass(model.base.model, backward)
                return self.placement.gather(None, chunk)
            computed.clear()
            try:
                local = run_forward_backward(logprob_fn, rows, loss_fn, loss_fn_config, backward, datum_loss)
            except TinkerError as refusal:  # refused after the forward (FB-15): other ranks wait on us
                self.placement.abandon_pass(computed, backward)
                return self.placement.gather(refusal, chunk)
            return self.placement.gather(local, chunk)

        try:
            results = [run_pass(chunk) for chunk in chunks]
        except BaseException:
            if backward:
                for name, p in model.params.items():
                    p.grad = saved[name]
            raise
        return merge_outputs(results, [len(chunk) for chunk in chunks])

    def forward_backward_many(self, jobs: Sequence[ForwardBackwardJob]) -> list[ForwardBackwardOutput | Exception]:
        """Several ``forward_backward`` requests, in order; each slot holds the job's output or the
        error it alone raised. Jobs of several clients on one base may run as one pass with
        per-row adapters (``multi_tenant.py``; ``batching`` decides), with the results of
        ``forward_backward`` called on each job in order."""
        return self.multi_tenant.run(jobs)

    def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        """One AdamW step over the client's adapter (OPT-1..OPT-7); clears its gradient."""
        model = self._model(model_id)
        self._grad_snapshots.pop(model_id, None)
        self.placement.reduce_grads(list(model.params.values()))
        response = adamw_step(model.optimizer, params)
        self.training.offload_idle()
        return response

    def gradient_snapshot(self, model_id: str) -> str:
        """Copy the client's accumulated gradient (FB-14) and keep the copy here, on this rank (so
        under FSDP every rank keeps its own partial gradient); the handle is the model id. At
        most one copy per model: the next snapshot, an ``optim_step`` or a release drops it."""
        params = self._model(model_id).params
        self._grad_snapshots[model_id] = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
        return model_id

    def restore_gradient(self, model_id: str, snapshot: str) -> None:
        """Put back the copy ``gradient_snapshot`` made (on each parameter's current device, which
        offloading may have changed since)."""
        saved = self._grad_snapshots.pop(snapshot)
        for name, p in self._model(model_id).params.items():
            grad = saved[name]
            p.grad = None if grad is None else grad.to(p.device)

    def read_state(self, model_id: str) -> AdapterState:
        """Weights, accumulated gradient, AdamW moments and step, keyed by stable parameter name."""
        model = self._model(model_id)

        def array(tensor: torch.Tensor | None, like: torch.Tensor) -> Array:
            source = torch.zeros_like(like) if tensor is None else tensor
            return source.detach().to("cpu", torch.float64).numpy().copy()

        params = model.params
        state = {name: model.optimizer.state.get(p, {}) for name, p in params.items()}
        grads = self.placement.reduced_grads(params)
        return AdapterState(
            weights={name: array(p, p) for name, p in params.items()},
            grads={name: array(grads[name], p) for name, p in params.items()},
            exp_avg={name: array(state[name].get("exp_avg"), p) for name, p in params.items()},
            exp_avg_sq={name: array(state[name].get("exp_avg_sq"), p) for name, p in params.items()},
            step=max((int(s["step"]) for s in state.values() if "step" in s), default=0),
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Adapter weights + AdamW state + metadata under ``path`` (atomic, CKPT-1..CKPT-3)."""
        model = self._model(model_id)
        meta = storage.metadata(model.spec.base_model, model.spec.lora, path, "training")
        with self.placement.writing(self.checkpoint_store, path, overwrite, meta) as folder:
            failure: BaseException | None = None
            if self.placement.is_writer:
                try:
                    storage.write_adapter(folder, model.params, model.spec.lora, model.spec.base_model)
                except Exception as exc:  # e.g. a full disk (CKPT-15): every rank must learn it first
                    failure = exc
            self.placement.agree(failure)
            self.placement.write_optimizer(folder, model.optimizer, model.params)

    def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Adapter weights + metadata under ``path``: a standard peft adapter folder."""
        model = self._model(model_id)
        meta = storage.metadata(model.spec.base_model, model.spec.lora, path, "sampler")
        with self.placement.writing(self.checkpoint_store, path, overwrite, meta) as folder:
            if self.placement.is_writer:
                storage.write_adapter(folder, model.params, model.spec.lora, model.spec.base_model)

    def export_merged(self, model_id: str, out_dir: str | Path, dtype: str | torch.dtype | None = None) -> Path:
        """The base model with this client's adapter merged in, as a full Hugging Face model folder
        (``export.export_merged``: float32 CPU copy, ``dtype`` as saved, atomic, ``ConflictError``
        if ``out_dir`` is not empty)."""
        return export.export_merged(self._model(model_id), out_dir, dtype)

    # -- sampling ------------------------------------------------------------------------------

    def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        """A sampler over fixed weights: the base model, a checkpoint, or a snapshot of a training
        model (a frozen copy of its adapter, SMP-14). Exactly one argument."""
        if sum(arg is not None for arg in (base_model, model_path, model_id)) != 1:
            raise BadRequestError("create_sampler", "give exactly one of base_model, model_path, model_id")
        lora: LoraConfig | None = None
        tensors: Mapping[str, torch.Tensor] | None = None
        if model_path is not None:
            base_model, lora, folder = storage.read_checkpoint(self.checkpoint_store, model_path)
            tensors = storage.read_checkpoint_adapter(model_path, folder)
        elif model_id is not None:
            training = self._model(model_id)
            base_model, lora, tensors = training.spec.base_model, training.spec.lora, training.params
        assert base_model is not None
        base = self.bases.get(base_model)
        adapter: str | None = None
        if lora is not None and tensors is not None:
            adapter = f"s_{uuid.uuid4().hex[:12]}"
            params = adapters.add_adapter(base.model, adapter, lora, 0)
            storage.install_adapter(base.model, base.name, adapter, params, tensors, model_path)
            for param in params.values():
                param.requires_grad_(False)
        spec = SamplerSpec(
            sampler_id=self.placement.new_id("torch-sampler"),
            base_model=base_model,
            vocab_size=base.vocab_size,
            max_context_length=base.max_context_length,
        )
        self._samplers[spec.sampler_id] = Sampler(spec=spec, base=base, adapter=adapter)
        return spec

    def release_sampler(self, sampler_id: str) -> None:
        """Forget a sampler and delete its adapter copy; unknown or released ids are a no-op."""
        state = self._samplers.pop(sampler_id, None)
        if state is not None and state.adapter is not None:
            adapters.delete_adapter(state.base.model, state.adapter)

    def sample_many(self, items: Sequence[tuple[str, SampleRequest]]) -> list[SampleResponse | Exception]:
        """Several ``(sampler_id, request)`` pairs; each slot holds that request's response or the
        error it alone raised. The requests on one base model are decoded together in one loop
        (``sampler.sample_batch``), each with its own sampler's adapter; seeded outputs are those
        of each request sampled alone (SMP-12)."""
        results: list[SampleResponse | Exception | None] = [None] * len(items)
        by_base: dict[str, list[tuple[int, sampler.SampleItem]]] = {}
        for slot, (sampler_id, request) in enumerate(items):
            state = self._samplers.get(sampler_id)
            if state is None:
                results[slot] = NotFoundError(f"sampler {sampler_id!r} does not exist")
                continue
            item = sampler.SampleItem(request=request, spec=state.spec, adapter=state.adapter)
            by_base.setdefault(state.base.name, []).append((slot, item))
        for name, group in by_base.items():
            base = self.bases.loaded[name]
            try:
                items_here = [item for _, item in group]
                answers = sampler.sample_batch(base.model, items_here, base.tokenizer, self.device, self.settings)
            except Exception as exc:  # the shared loop failed: every request in it gets the error
                answers = [exc] * len(group)
            for (slot, _), answer in zip(group, answers, strict=True):
                results[slot] = answer
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Drop every model, sampler and base model (and the files of offloaded models)."""
        self.training.close()
        self._samplers.clear()
        self.bases.loaded.clear()

    # -- helpers -------------------------------------------------------------------------------

    def _model(self, model_id: str) -> TrainingModel:
        """The training model ``model_id``, its state back in memory if it was offloaded."""
        return self.training.get(model_id)

    def _register(
        self,
        base: LoadedBase,
        lora: LoraConfig,
        seed: int | None,
        tensors: Mapping[str, torch.Tensor] | None,
        optimizer_state: storage.OptimizerState | None,
        path: ParsedCheckpointTinkerPath | None = None,
    ) -> ModelSpec:
        adapter = f"t_{uuid.uuid4().hex[:12]}"
        try:
            params = adapters.add_adapter(base.model, adapter, lora, seed if seed is not None else secrets.randbits(63))
        except ValueError as exc:
            raise BadRequestError("base_model", f"{base.name!r} cannot be trained with LoRA: {exc}") from exc
        if tensors is not None:
            storage.install_adapter(base.model, base.name, adapter, params, tensors, path)
        optimizer = torch.optim.AdamW(list(params.values()), foreach=False)
        if optimizer_state is not None:
            try:
                storage.restore_optimizer(optimizer, params, optimizer_state)
            except ValueError as exc:
                adapters.delete_adapter(base.model, adapter)
                raise BadRequestError("path", f"optimizer state does not fit the adapter: {exc}") from exc
        spec = ModelSpec(
            model_id=self.placement.new_id("torch"),
            base_model=base.name,
            vocab_size=base.vocab_size,
            max_context_length=base.max_context_length,
            lora=lora,
        )
        self.training.add(TrainingModel(spec=spec, base=base, adapter=adapter, params=params, optimizer=optimizer))
        return spec
