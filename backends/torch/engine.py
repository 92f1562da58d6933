"""``TorchEngine``: the synchronous core of the torch backend, independent of any transport.

The engine holds ONE Hugging Face base model per base-model name and any number of LoRA adapters
on it (``adapters.py``): one per training model (with its own ``torch.optim.AdamW``) and one per
sampler that has adapter weights (a frozen copy). Its methods mirror the ``Backend`` contract but
are plain synchronous calls with no asyncio and no threads of their own, so the same engine can be
driven by ``TorchBackend`` (one worker thread under a lock), an FSDP rank process reading commands
from a pipe, a Modal container or an HTTP server. It is not thread-safe: callers serialise calls
(``tokenizer`` and ``supported_models`` may be called concurrently with one running call).

Numerics (spec FB, OPT): ``forward_backward`` batches datums with right padding and an attention
mask, or as prefix trees when they share prefixes (``prefix_layout.py``; micro-batches of at most
``max_batch_tokens`` padded tokens, gradients summed), takes
log-softmax logprobs of the target tokens in float32 (from the hidden states in row chunks,
``head.py``, where the model allows; else ``tinker_std.engine.target_logprobs`` on full logits) and
evaluates the shared losses (``tinker_std.engine.run_forward_backward``); ``optim_step`` is
``tinker_std.engine.adamw_step`` over the client's adapter only, after which idle clients' state
may move to files (``offload.py``, ``resident_models``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tinker_std.backend import AdapterState, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.checkpoints import CheckpointStore
from tinker_std.engine import (
    adamw_step,
    datum_inputs,
    forward_backward_output,
    run_forward_backward,
    target_logprobs,
)
from tinker_std.errors import BadRequestError, ConflictError, ContextLengthError, NotFoundError
from tinker_std.limits import check_rank_for_width
from tinker_std.losses import compute_loss, gradient_positions
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

from . import adapters, head, lora_linear, offload, packed, prefix_layout, sampler, storage
from .batching import BatchingMode, PathChooser
from .environment import check_hf_stack
from .models import (
    BUILTIN_MODELS,
    load_causal_lm,
    load_tokenizer,
    model_context_length,
    quiet_transformers,
    resolve_model_path,
)
from .placement import Placement, SingleProcess

__all__ = ["DEFAULT_RESIDENT_MODELS", "ForwardBackwardJob", "TorchEngine", "resolve_device", "resolve_dtype"]

Array = npt.NDArray[np.floating[Any]]

#: Padded tokens (batch x longest datum) per forward pass of ``forward_backward``.
DEFAULT_MAX_BATCH_TOKENS = 16384
#: Idle training models whose state ``TorchBackend`` keeps in memory (the rest wait in files).
DEFAULT_RESIDENT_MODELS = 2
#: Logit elements (padded tokens x vocabulary) per forward pass: 2**28 float32 logits are 1 GiB.
MAX_LOGIT_ELEMENTS = 2**28

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, else ``cuda`` when available, else ``cpu``."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` (a ``torch.dtype`` or a name such as ``"bfloat16"``), else float32 on CPU and
    bfloat16 elsewhere."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def precision(device: str | torch.device | None, dtype: str | torch.dtype | None) -> str:
    """The capability variant a backend on the torch engine declares for these options:
    ``"bf16"`` (bfloat16 or float16), ``"fp32"`` (float32 off the CPU: fp32 class, no bit-exact
    replay) or ``"cpu"`` (float32 on the CPU: fp32 class and deterministic)."""
    resolved = resolve_device(device)
    if resolve_dtype(dtype, resolved) in (torch.bfloat16, torch.float16):
        return "bf16"
    return "cpu" if resolved.type == "cpu" else "fp32"


@dataclass
class _Base:
    """One loaded base model, shared by every adapter on it."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    vocab_size: int
    max_context_length: int


@dataclass
class _TrainingModel:
    spec: ModelSpec
    base: _Base
    adapter: str
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.AdamW


@dataclass(frozen=True)
class ForwardBackwardJob:
    """One ``forward_backward`` request (the arguments of ``TorchEngine.forward_backward``)."""

    model_id: str
    data: Sequence[Datum]
    loss_fn: str
    loss_fn_config: Mapping[str, float]
    backward: bool


@dataclass(frozen=True)
class _Sampler:
    spec: SamplerSpec
    base: _Base
    adapter: str | None


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
    (``offload.py``) and come back, bit for bit, on their next call (``None``: never). Construction
    raises ``IncompatibleEnvironmentError`` when the installed transformers and peft cannot work
    together (``environment.check_hf_stack``).
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
    ) -> None:
        if max_context_length is not None and max_context_length < 1:
            raise ValueError("max_context_length must be >= 1")
        if resident_models is not None and resident_models < 1:
            raise ValueError("resident_models must be >= 1 (or None: never offload)")
        check_hf_stack()
        self.checkpoint_store = checkpoint_store
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.extra_models = list(dict.fromkeys(models or []))
        self.max_context_length = max_context_length
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_batch_tokens = max_batch_tokens
        self.placement = placement if placement is not None else SingleProcess()
        self.path_chooser = PathChooser(self.placement.forced_batching or batching)
        self._bases: dict[str, _Base] = {}
        self._paths: dict[str, str] = {}
        self._tokenizers: dict[str, Any] = {}
        self._models: dict[str, _TrainingModel] = {}
        self._samplers: dict[str, _Sampler] = {}
        self._files_lock = threading.RLock()  # model paths and tokenizers (``tokenizer`` may run concurrently)
        self.resident_models = resident_models
        self._recent: OrderedDict[str, None] = OrderedDict()  # training model ids, least recently used first
        self._grad_snapshots: dict[str, dict[str, torch.Tensor | None]] = {}  # gradient_snapshot's copies
        self._idle = offload.IdleStore(checkpoint_store.root / ".offload" / uuid.uuid4().hex)

    # -- base models ---------------------------------------------------------------------------

    def served_models(self) -> list[str]:
        """The listed models: the built-ins (``tiny-llama`` first), then ``models``."""
        return list(dict.fromkeys([*BUILTIN_MODELS, *self.extra_models]))

    def supported_models(self) -> list[SupportedModel]:
        """Every listed model with its maximum context length (loads configs, not weights)."""
        return [
            SupportedModel(model_name=name, max_context_length=self._context_length(name))
            for name in self.served_models()
        ]

    def tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model`` (``NotFoundError`` when it cannot be loaded offline)."""
        with self._files_lock:
            tok = self._tokenizers.get(base_model)
            if tok is None:
                tok = load_tokenizer(self._path(base_model))
                self._tokenizers[base_model] = tok
            return tok  # type: ignore[no-any-return]

    def _path(self, base_model: str) -> str:
        with self._files_lock:
            path = self._paths.get(base_model)
            if path is None:
                path = resolve_model_path(base_model, self.served_models(), self.cache_dir)
                self._paths[base_model] = path
            return path

    def _context_length(self, base_model: str) -> int:
        recipe = BUILTIN_MODELS.get(base_model)
        if recipe is not None:
            cap = self.max_context_length
            return recipe.max_context_length if cap is None else min(recipe.max_context_length, cap)
        return model_context_length(self._path(base_model), self.max_context_length)

    def _base(self, base_model: str) -> _Base:
        base = self._bases.get(base_model)
        if base is None:
            path = self._path(base_model)
            model = load_causal_lm(path, self.dtype, self.device)
            head = model.get_output_embeddings()
            vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
            self.placement.prepare_base(model)
            base = _Base(
                name=base_model,
                path=path,
                model=model,
                tokenizer=self.tokenizer(base_model),
                vocab_size=vocab_size,
                max_context_length=self._context_length(base_model),
            )
            self._bases[base_model] = base
        return base

    # -- training models -----------------------------------------------------------------------

    def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        """A new training model: a fresh adapter (seeded by ``lora.seed``) and a fresh AdamW."""
        base = self._base(base_model)
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
        tensors = self._read_adapter(path, folder)
        state = None
        if with_optimizer:
            state = storage.read_optimizer(folder)
            if state is None:
                raise BadRequestError("path", f"{path.tinker_path} has no optimizer state")
        base = self._base(base_model)
        return self._register(base, lora, 0, tensors, state, path)

    def release_model(self, model_id: str) -> None:
        """Forget ``model_id`` and delete its adapter; unknown or released ids are a no-op."""
        model = self._models.pop(model_id, None)
        self._recent.pop(model_id, None)
        self._grad_snapshots.pop(model_id, None)
        self._idle.discard(model_id)
        if model is not None:
            adapters.delete_adapter(model.base.model, model.adapter)

    def forward_backward(
        self,
        model_id: str,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        """FB-1..FB-6 for one validated batch; with ``backward`` gradients accumulate into the
        client's adapter only. A failure leaves the accumulated gradient as it was."""
        model = self._model(model_id)
        self._check_lengths(model, data)
        adapters.activate(model.base.model, model.adapter, trainable=True)
        chunks = self._micro_batches(data, model.base.vocab_size)
        saved = {n: None if p.grad is None else p.grad.clone() for n, p in model.params.items()} if backward else {}

        def logprob_fn(batch: Sequence[Datum]) -> list[torch.Tensor]:
            hints = [gradient_positions(loss_fn, datum_inputs(d)) for d in batch] if backward else None
            layout = self._layout(model.base, batch)
            return self._logprobs(model.base, batch, layout, [model.adapter] * len(batch), hints)

        def run_pass(chunk: Sequence[Datum]) -> ForwardBackwardOutput:
            rows = self.placement.rows(chunk)
            if not rows:
                self.placement.idle_pass(model.base.model, backward)
                return self.placement.gather(None, chunk)
            local = run_forward_backward(logprob_fn, rows, loss_fn, loss_fn_config, backward)
            return self.placement.gather(local, chunk)

        try:
            results = [run_pass(chunk) for chunk in chunks]
        except BaseException:
            if backward:
                for name, p in model.params.items():
                    p.grad = saved[name]
            raise
        if len(results) == 1:
            return results[0]
        return ForwardBackwardOutput(
            loss_fn_output_type="TensorData",
            loss_fn_outputs=[o for r in results for o in r.loss_fn_outputs],
            metrics={"loss:sum": float(sum(r.metrics["loss:sum"] for r in results))},
        )

    def forward_backward_many(self, jobs: Sequence[ForwardBackwardJob]) -> list[ForwardBackwardOutput | Exception]:
        """Several ``forward_backward`` requests, in order; each slot holds the job's output or the
        error it alone raised (a bad request never affects the other jobs).

        Consecutive jobs of different training models on the same base form a group that may run
        as ONE forward and backward pass over the base model, each client's rows going through its
        own adapter (``adapters.per_row_adapters``); ``path_chooser`` decides per group whether
        that or one pass per job is faster. Results are those of ``forward_backward`` called on
        each job in order (spec/notes/multi-tenant-batching.md).
        """
        results: list[ForwardBackwardOutput | Exception | None] = [None] * len(jobs)
        groups: list[list[int]] = []
        layouts: dict[int, prefix_layout.RowLayout] = {}  # each job's own layout, made once
        for i, job in enumerate(jobs):
            try:
                model = self._model(job.model_id)
                self._check_lengths(model, job.data)
            except Exception as exc:  # reported in this job's slot
                results[i] = exc
                continue
            if groups and self._joins(jobs, groups[-1], i, layouts):
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            outputs = self._run_group([jobs[i] for i in group], [layouts.get(i) for i in group])
            for i, result in zip(group, outputs, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _joins(
        self, jobs: Sequence[ForwardBackwardJob], group: list[int], i: int, layouts: dict[int, prefix_layout.RowLayout]
    ) -> bool:
        """Whether job ``i`` may share one pass with ``group``: another training model on the same
        base, and the stacked batch (each job's own layout, padded to the widest) stays within the
        token and logit budgets. Fills ``layouts`` for the jobs it looks at."""
        model = self._models[jobs[i].model_id]
        members = [self._models[jobs[j].model_id] for j in group]
        if model.base is not members[0].base or any(m is model for m in members):
            return False
        for j in [*group, i]:
            if j not in layouts:
                layouts[j] = self._layout(model.base, jobs[j].data)
        blocks = [layouts[j].input_ids.shape for j in [*group, i]]
        padded = sum(rows for rows, _ in blocks) * max(width for _, width in blocks)
        return padded <= self._token_budget(model.base.vocab_size)

    def _run_group(
        self, group: Sequence[ForwardBackwardJob], layouts: Sequence[prefix_layout.RowLayout | None]
    ) -> list[ForwardBackwardOutput | Exception]:
        data = [d for job in group for d in job.data]
        tokens = sum(d.model_input.length for d in data)
        padded = len(data) * max(d.model_input.length for d in data)
        path = self.path_chooser.choose(len(group), padded)
        start = time.perf_counter()
        if path == "batched":
            try:
                batched = self._forward_backward_batched(
                    group,
                    [
                        self._layout(self._models[job.model_id].base, job.data) if layout is None else layout
                        for job, layout in zip(group, layouts, strict=True)
                    ],
                )
            except Exception:  # e.g. a loss that rejects its inputs: one at a time names the culprit
                path = "serial"
            else:
                self.path_chooser.record(len(group), padded, path, (time.perf_counter() - start) / tokens)
                return list(batched)
        outputs: list[ForwardBackwardOutput | Exception] = []
        for job in group:
            try:
                outputs.append(
                    self.forward_backward(job.model_id, job.data, job.loss_fn, job.loss_fn_config, job.backward)
                )
            except Exception as exc:  # reported in this job's slot
                outputs.append(exc)
        self.path_chooser.record(len(group), padded, "serial", (time.perf_counter() - start) / tokens)
        return outputs

    def _forward_backward_batched(
        self, group: Sequence[ForwardBackwardJob], layouts: Sequence[prefix_layout.RowLayout]
    ) -> list[ForwardBackwardOutput]:
        """One forward (and backward) pass over the rows of every job (``layouts``: each job's own,
        ``_layout``), each job's rows through its own adapter. Rows are independent, so each job's
        logprobs, loss and gradient are those of its own pass. On failure every adapter's
        accumulated gradient is restored."""
        models = [self._models[job.model_id] for job in group]
        base = models[0].base
        data = [d for job in group for d in job.data]
        # each job's rows laid out as its own pass lays them out (``layouts``: same shapes, same bits)
        layout, ranges = prefix_layout.stack(layouts)
        segments: list[adapters.Segment] = [
            (start, stop, model.adapter, width) for (start, stop, width), model in zip(ranges, models, strict=True)
        ]
        bounds: list[tuple[int, int]] = []
        for job in group:
            first = bounds[-1][1] if bounds else 0
            bounds.append((first, first + len(job.data)))
        training = [m for job, m in zip(group, models, strict=True) if job.backward]
        saved = [{n: None if p.grad is None else p.grad.clone() for n, p in m.params.items()} for m in training]
        try:
            with (
                torch.set_grad_enabled(bool(training)),
                adapters.per_row_adapters(base.model, segments, [m.params for m in training], fused=True),
            ):
                datum_adapters = [m.adapter for job, m in zip(group, models, strict=True) for _ in job.data]
                inputs = [[datum_inputs(d) for d in job.data] for job in group]
                hints = [
                    gradient_positions(job.loss_fn, one) for job, ins in zip(group, inputs, strict=True) for one in ins
                ]
                logprobs = self._logprobs(base, data, layout, datum_adapters, hints)
                losses = [
                    compute_loss(job.loss_fn, logprobs[start:stop], ins, job.loss_fn_config)
                    for job, ins, (start, stop) in zip(group, inputs, bounds, strict=True)
                ]
                to_backward = [
                    loss for job, loss in zip(group, losses, strict=True) if job.backward and loss.requires_grad
                ]
                if to_backward:
                    torch.stack(to_backward).sum().backward()  # type: ignore[no-untyped-call]
        except BaseException:
            for model, grads in zip(training, saved, strict=True):
                for name, p in model.params.items():
                    p.grad = grads[name]
            raise
        return [
            forward_backward_output(logprobs[start:stop], loss)
            for (start, stop), loss in zip(bounds, losses, strict=True)
        ]

    def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        """One AdamW step over the client's adapter (OPT-1..OPT-7); clears its gradient."""
        model = self._model(model_id)
        self._grad_snapshots.pop(model_id, None)
        self.placement.reduce_grads(list(model.params.values()))
        response = adamw_step(model.optimizer, params)
        self._offload_idle()
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
            if self.placement.is_writer:
                storage.write_adapter(folder, model.params, model.spec.lora, model.spec.base_model)
            self.placement.write_optimizer(folder, model.optimizer, model.params)

    def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Adapter weights + metadata under ``path``: a standard peft adapter folder."""
        model = self._model(model_id)
        meta = storage.metadata(model.spec.base_model, model.spec.lora, path, "sampler")
        with self.placement.writing(self.checkpoint_store, path, overwrite, meta) as folder:
            if self.placement.is_writer:
                storage.write_adapter(folder, model.params, model.spec.lora, model.spec.base_model)

    def export_merged(self, model_id: str, out_dir: str | Path, dtype: str | torch.dtype | None = None) -> Path:
        """Write the base model with this client's adapter merged in, as a full Hugging Face model
        folder (``save_pretrained`` weights + tokenizer) loadable by ``AutoModelForCausalLM``.

        The merge runs on a fresh float32 CPU copy of the base (``peft`` ``merge_and_unload``); the
        shared base model is not touched. ``dtype`` is the saved dtype (default float32).
        ``ConflictError`` if ``out_dir`` exists and is not empty. The folder appears atomically.
        """
        import peft

        model = self._model(model_id)
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConflictError(f"{out} exists and is not empty")
        save_dtype = resolve_dtype(dtype, torch.device("cpu"))
        copy = load_causal_lm(model.base.path, torch.float32, torch.device("cpu"))
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            wrapped = peft.get_peft_model(copy, adapters.peft_config(model.spec.lora))
        target = adapters.adapter_params(wrapped.base_model.model, "default")
        if set(target) != set(model.params):
            raise RuntimeError(f"merge copy has adapter tensors {sorted(target)}, expected {sorted(model.params)}")
        with torch.no_grad():
            for name, param in model.params.items():
                target[name].copy_(param.detach().to("cpu", torch.float32))
        merged = wrapped.merge_and_unload()
        merged.to(save_dtype)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        with quiet_transformers():
            merged.save_pretrained(staging)
        model.base.tokenizer.save_pretrained(staging)
        if out.exists():
            out.rmdir()
        staging.replace(out)
        return out

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
            tensors = self._read_adapter(model_path, folder)
        elif model_id is not None:
            training = self._model(model_id)
            base_model, lora, tensors = training.spec.base_model, training.spec.lora, training.params
        assert base_model is not None
        base = self._base(base_model)
        adapter: str | None = None
        if lora is not None and tensors is not None:
            adapter = f"s_{uuid.uuid4().hex[:12]}"
            params = adapters.add_adapter(base.model, adapter, lora, 0)
            self._install(base, adapter, params, tensors, model_path)
            for param in params.values():
                param.requires_grad_(False)
        spec = SamplerSpec(
            sampler_id=self.placement.new_id("torch-sampler"),
            base_model=base_model,
            vocab_size=base.vocab_size,
            max_context_length=base.max_context_length,
        )
        self._samplers[spec.sampler_id] = _Sampler(spec=spec, base=base, adapter=adapter)
        return spec

    def release_sampler(self, sampler_id: str) -> None:
        """Forget a sampler and delete its adapter copy; unknown or released ids are a no-op."""
        state = self._samplers.pop(sampler_id, None)
        if state is not None and state.adapter is not None:
            adapters.delete_adapter(state.base.model, state.adapter)

    def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        """SMP-1..SMP-13 and SMP-17 for one request (see ``sampler.py``)."""
        state = self._samplers.get(sampler_id)
        if state is None:
            raise NotFoundError(f"sampler {sampler_id!r} does not exist")
        adapters.activate(state.base.model, state.adapter, trainable=False)
        with torch.no_grad():
            return sampler.sample(state.base.model, request, state.spec, state.base.tokenizer, self.device)

    def sample_many(self, items: Sequence[tuple[str, SampleRequest]]) -> list[SampleResponse | Exception]:
        """Several ``(sampler_id, request)`` pairs; each slot holds that request's response or the
        error it alone raised. The requests on one base model are decoded together in one loop
        (``sampler.sample_batch``), each with its own sampler's adapter; seeded outputs are those
        of ``sample`` on each request alone (SMP-12)."""
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
            base = self._bases[name]
            try:
                answers = sampler.sample_batch(base.model, [item for _, item in group], base.tokenizer, self.device)
            except Exception as exc:  # the shared loop failed: every request in it gets the error
                answers = [exc] * len(group)
            for (slot, _), answer in zip(group, answers, strict=True):
                results[slot] = answer
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Drop every model, sampler and base model (and the files of offloaded models)."""
        self._idle.close()
        self._recent.clear()
        self._models.clear()
        self._samplers.clear()
        self._bases.clear()

    # -- helpers -------------------------------------------------------------------------------

    def _model(self, model_id: str) -> _TrainingModel:
        """The training model ``model_id``, its state back in memory if it was offloaded."""
        model = self._models.get(model_id)
        if model is None:
            raise NotFoundError(f"training model {model_id!r} does not exist (or was released)")
        if model_id in self._idle:
            self._idle.restore(model_id, model.params, model.optimizer)
        self._recent[model_id] = None
        self._recent.move_to_end(model_id)
        return model

    def _offload_idle(self) -> None:
        """Offload the least recently used models beyond ``resident_models`` that hold no gradient."""
        if self.resident_models is None:
            return
        resident = [m for m in self._recent if m not in self._idle]
        for model_id in resident[: max(len(resident) - self.resident_models, 0)]:
            model = self._models[model_id]
            if all(p.grad is None for p in model.params.values()):
                self._idle.offload(model_id, model.params, model.optimizer)

    @staticmethod
    def _check_lengths(model: _TrainingModel, data: Sequence[Datum]) -> None:
        for i, datum in enumerate(data):
            length = datum.model_input.length
            if length > model.spec.max_context_length:
                raise ContextLengthError(
                    f"data[{i}].model_input",
                    f"{length} tokens exceed the context of {model.spec.max_context_length}",
                )
            if length == 0:
                raise BadRequestError(f"data[{i}].model_input", "must hold at least one token")

    def _token_budget(self, vocab_size: int) -> int:
        """Padded tokens per forward pass: ``max_batch_tokens``, and logits within ``MAX_LOGIT_ELEMENTS``."""
        return max(1, min(self.max_batch_tokens, MAX_LOGIT_ELEMENTS // max(vocab_size, 1)))

    def _micro_batches(self, data: Sequence[Datum], vocab_size: int) -> list[list[Datum]]:
        """Consecutive groups whose padded size (count x longest) stays within ``max_batch_tokens``
        and whose logits stay within ``MAX_LOGIT_ELEMENTS``; a single datum is never split."""
        budget = self._token_budget(vocab_size)
        chunks: list[list[Datum]] = []
        current: list[Datum] = []
        longest = 0
        for datum in data:
            length = datum.model_input.length
            if current and (len(current) + 1) * max(longest, length) > budget:
                chunks.append(current)
                current, longest = [], 0
            current.append(datum)
            longest = max(longest, length)
        if current:
            chunks.append(current)
        return chunks

    def _layout(self, base: _Base, batch: Sequence[Datum]) -> prefix_layout.RowLayout:
        """How one request's datums are laid out as rows: as prefix trees when they share
        prefixes and the model allows (``_shares_prefixes``), else right-padded."""
        sequences = [d.model_input.to_ints() for d in batch]
        shared = prefix_layout.plan(sequences) if self._shares_prefixes(base.model) else None
        return shared if shared is not None else prefix_layout.plain(sequences)

    def _logprobs(
        self,
        base: _Base,
        batch: Sequence[Datum],
        layout: prefix_layout.RowLayout,
        datum_adapters: Sequence[str | None],
        gradient_rows: Sequence[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """Target logprobs of each datum ((N,) or (N, K), float32 on CPU, differentiable), from
        one forward pass over ``layout`` (``_layout``, or several requests' layouts stacked).
        ``datum_adapters``: the adapter each datum goes through (already active, or installed
        per row by ``adapters.per_row_adapters``); ``gradient_rows``: per datum, the positions
        that may get a gradient (``losses.gradient_positions``; a hint for ``head.py``).

        Where ``head.output_head`` splits the model, the decoder's hidden states go through the
        output layer in row chunks (``head.batch_target_logprobs``: no full-vocabulary logits);
        else the model's own logits are used (``tinker_std.engine.target_logprobs``). Every layout
        and path gives the same numbers within float32 rounding."""
        additive = base.model.config._attn_implementation == "eager"
        inputs: dict[str, Any] = {
            k: v.to(self.device) for k, v in layout.decoder_inputs(additive, base.model.dtype).items()
        }
        inputs["use_cache"] = False
        split = head.output_head(base.model)
        # one adapter: its LoRA layers as fused products; the multi-tenant pass computes each
        # client's rows the same way (``per_row_adapters(fused=True)``), so either path gives a
        # request the same bits
        single = datum_adapters[0] if len(set(datum_adapters)) == 1 else None
        with (
            packed.packed_linears(base.model),  # frozen CPU float32 weights from packed copies (packed.py)
            lora_linear.fused_lora_linears(base.model, single),  # one adapter's LoRA layers as fused products
        ):
            if split is not None:
                hidden = split.decoder(**inputs).last_hidden_state
            else:
                logits = base.model(**inputs).logits
        targets = [d.loss_fn_inputs["target_tokens"].to_torch().long().to(self.device) for d in batch]
        positions = layout.positions
        if split is not None:
            states = hidden.reshape(-1, hidden.shape[-1])
            out = head.batch_target_logprobs(split, states, positions, targets, datum_adapters, gradient_rows)
        else:
            flat = logits.reshape(-1, logits.shape[-1])
            out = [target_logprobs(flat[p].float(), t) for p, t in zip(positions, targets, strict=True)]
        return [lp.to("cpu") for lp in out]

    @staticmethod
    def _shares_prefixes(model: Any) -> bool:
        """Whether a request's datums may be laid out as prefix trees (``prefix_layout.plan``):
        a decoder known to take a prepared 4D mask with position ids and attend over it as given
        (no sliding window), with SDPA or eager attention; ``TINKER_STD_SHARED_PREFIX=0`` turns
        it off."""
        if os.environ.get("TINKER_STD_SHARED_PREFIX", "1") == "0":
            return False
        config = model.config
        window = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
        known = any(cls.__name__ in head.FUSABLE_ARCHITECTURES for cls in type(model).__mro__)  # FSDP subclasses
        return known and not window and config._attn_implementation in ("sdpa", "eager")

    def _read_adapter(self, path: ParsedCheckpointTinkerPath, folder: Path) -> dict[str, torch.Tensor]:
        try:
            return storage.read_adapter(folder)
        except (OSError, ValueError) as exc:
            raise BadRequestError("path", f"{path.tinker_path} is not a valid torch checkpoint: {exc}") from exc

    def _install(
        self,
        base: _Base,
        adapter: str,
        params: Mapping[str, torch.nn.Parameter],
        tensors: Mapping[str, torch.Tensor],
        path: ParsedCheckpointTinkerPath | None,
    ) -> None:
        """Copy ``tensors`` into a new adapter's ``params``; on a mismatch delete the adapter and
        raise ``BadRequestError`` (field ``path``)."""
        problem = None
        if set(tensors) != set(params):
            problem = f"adapter tensors {sorted(set(tensors) ^ set(params))[:4]} do not match the LoRA config"
        else:
            bad = [n for n, p in params.items() if tuple(tensors[n].shape) != tuple(p.shape)]
            if bad:
                found, wanted = tuple(tensors[bad[0]].shape), tuple(params[bad[0]].shape)
                problem = f"adapter tensor {bad[0]} has shape {found}, expected {wanted}"
        if problem is not None:
            adapters.delete_adapter(base.model, adapter)
            where = path.tinker_path if path is not None else "the source model"
            raise BadRequestError("path", f"{where} does not fit base model {base.name!r}: {problem}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[name].detach().to(device=param.device, dtype=param.dtype))

    def _register(
        self,
        base: _Base,
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
            self._install(base, adapter, params, tensors, path)
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
        self._models[spec.model_id] = _TrainingModel(
            spec=spec, base=base, adapter=adapter, params=params, optimizer=optimizer
        )
        self._recent[spec.model_id] = None
        return spec
