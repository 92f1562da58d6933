"""``minimal``: a complete tinker-std backend in one file, written to be copied.

Entry point ``tinker_std.backends.minimal:MinimalBackend``; the guide that walks through it is
``spec/implementing-a-backend.md``. Copy this file, swap the toy model for yours, and run the
conformance suite against it::

    pytest --pyargs tinker_std.conformance --tinker-backend mypkg.backend:MyBackend --tinker-report report.json

What the shared client layer already does for you (so none of it appears below): futures and
per-client ordering (calls for one ``model_id`` arrive one at a time, in order), validation of
every request (token ids, shapes, lengths, loss inputs and config, undeclared capabilities),
chunking of large batches, and custom losses. What is left, and lives in this file:

1. a model: ``forward(tokens, adapter) -> logits``, here a tiny one-block transformer of its own
   over a byte vocabulary, with LoRA on every linear layer (spec 08-lora.md);
2. the engine calls of ``tinker_std.backend.Backend``, almost all of them a few lines thanks to
   ``tinker_std.training_math`` (every loss, backward, outputs, AdamW) and
   ``tinker_std.checkpoints.CheckpointStore`` (atomic checkpoint folders);
3. a sampler: a plain decode loop that recomputes the whole sequence for every token (no KV
   cache; slow but obviously right), using the shared rules of ``tinker_std.sampling_rules`` for
   what the tokens mean (filters, ties, seeds, stops; spec 07-sampling.md).

It computes in float32 and declares the ``fp32`` tolerance class. It does not declare
``deterministic`` (although on a CPU it happens to be), so it promises what an ordinary float32
GPU backend can promise: the suite checks its replays within tolerance instead of bit for bit.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from tinker_std.backend import Backend, ModelSpec, SampleRequest, SamplerSpec, Tokenizer, new_model_id
from tinker_std.capabilities import Capabilities
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, NotFoundError
from tinker_std.sampling_rules import StopRule, choose_token, prompt_scores, sequence_generator, token_budget
from tinker_std.training_math import adamw_step, run_forward_backward, target_logprobs
from tinker_std.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    SupportedModel,
)

__all__ = ["MinimalBackend", "ByteTokenizer", "MODEL_NAME", "forward"]

# -- the model -------------------------------------------------------------------------------------

MODEL_NAME = "minimal/byte-lm"
EOS_TOKEN_ID = 256  # token ids 0..255 are bytes, 256 is end-of-sequence
VOCAB_SIZE = 257
CONTEXT = 128  # max_context_length: prompt + completion
D_MODEL, D_MLP = 32, 64
DTYPE = torch.float32
LORA_ALPHA = 32.0  # fixed by LORA-1: an adapted layer adds (alpha / rank) * B @ A

#: Every linear layer, (out_features, in_features), in a fixed order (the adapter's parameter order).
LINEARS: dict[str, tuple[int, int]] = {
    "attn.q": (D_MODEL, D_MODEL),
    "attn.k": (D_MODEL, D_MODEL),
    "attn.v": (D_MODEL, D_MODEL),
    "attn.o": (D_MODEL, D_MODEL),
    "mlp.up": (D_MLP, D_MODEL),
    "mlp.down": (D_MODEL, D_MLP),
    "lm_head": (VOCAB_SIZE, D_MODEL),
}
#: Which layers each ``LoraConfig`` flag adapts (LORA-4).
FAMILIES = {
    "train_attn": ("attn.q", "attn.k", "attn.v", "attn.o"),
    "train_mlp": ("mlp.up", "mlp.down"),
    "train_unembed": ("lm_head",),
}


class ByteTokenizer:
    """UTF-8 bytes as tokens plus ``<|eos|>``; satisfies ``tinker_std.backend.Tokenizer``."""

    eos_token_id: int | None = EOS_TOKEN_ID

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        # Stop strings (SMP-5) are matched against this text, so it must be total: invalid UTF-8
        # becomes U+FFFD instead of raising.
        data = bytearray()
        for token in token_ids:
            if token == EOS_TOKEN_ID:
                data += b"" if skip_special_tokens else b"<|eos|>"
            else:
                data.append(token)
        return data.decode("utf-8", errors="replace")


@functools.cache
def base_weights() -> dict[str, torch.Tensor]:
    """The frozen base model: random but identical in every process (fixed seed), built once."""
    gen = torch.Generator().manual_seed(1234)
    weights = {
        "embed": torch.randn(VOCAB_SIZE, D_MODEL, generator=gen, dtype=DTYPE),
        "pos": 0.3 * torch.randn(CONTEXT, D_MODEL, generator=gen, dtype=DTYPE),
    }
    for name, (out_f, in_f) in LINEARS.items():
        scale = (2.0 if name == "lm_head" else 1.0) / math.sqrt(in_f)  # logits with std ~2: not too flat
        weights[name] = scale * torch.randn(out_f, in_f, generator=gen, dtype=DTYPE)
    return weights


@dataclass
class Adapter:
    """LoRA tensors ``<layer>.lora_A`` (rank, in) and ``<layer>.lora_B`` (out, rank) of the adapted layers."""

    config: LoraConfig
    params: dict[str, torch.Tensor]

    @classmethod
    def fresh(cls, config: LoraConfig) -> Adapter:
        """LORA-2: ``A`` kaiming-uniform (a = sqrt(5)) from ``config.seed`` (LORA-3), ``B = 0``."""
        gen = torch.Generator().manual_seed(_seed(config.seed))
        params: dict[str, torch.Tensor] = {}
        for layer, (out_f, in_f) in LINEARS.items():
            if any(getattr(config, flag) and layer in layers for flag, layers in FAMILIES.items()):
                lora_a = torch.empty(config.rank, in_f, dtype=DTYPE)
                torch.nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=gen)
                params[f"{layer}.lora_A"] = torch.nn.Parameter(lora_a)
                params[f"{layer}.lora_B"] = torch.nn.Parameter(torch.zeros(out_f, config.rank, dtype=DTYPE))
        return cls(config, params)

    def frozen_copy(self) -> Adapter:
        """A copy that later training cannot reach (a sampler's snapshot, SMP-14)."""
        return Adapter(self.config, {name: p.detach().clone() for name, p in self.params.items()})


def forward(tokens: Sequence[int], adapter: Adapter | None) -> torch.Tensor:
    """Logits (T, V) for T >= 1 tokens; row ``t`` predicts the token after ``tokens[t]``.

    One pre-norm transformer block: single-head causal attention, then a tanh MLP. Differentiable
    in the adapter's tensors; the base weights never get a gradient.
    """
    w = base_weights()

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ w[name].T
        if adapter is not None and f"{name}.lora_A" in adapter.params:
            scaling = LORA_ALPHA / adapter.config.rank
            y = y + scaling * (x @ adapter.params[f"{name}.lora_A"].T) @ adapter.params[f"{name}.lora_B"].T
        return y

    def norm(x: torch.Tensor) -> torch.Tensor:  # RMS norm without parameters
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6)

    n = len(tokens)
    x = w["embed"][torch.as_tensor(list(tokens), dtype=torch.long)] + w["pos"][:n]
    h = norm(x)
    scores = (linear("attn.q", h) @ linear("attn.k", h).T) / math.sqrt(D_MODEL)
    future = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)  # position t sees only 0..t (ALN-2)
    x = x + linear("attn.o", torch.softmax(scores.masked_fill(future, -math.inf), dim=-1) @ linear("attn.v", h))
    x = x + linear("mlp.down", torch.tanh(linear("mlp.up", norm(x))))
    return linear("lm_head", norm(x))


# -- sampling --------------------------------------------------------------------------------------


def generate(
    prompt: list[int], adapter: Adapter | None, params: SamplingParams, max_tokens: int, generator: torch.Generator
) -> SampledSequence:
    """One completion of ``prompt`` (SMP-3..SMP-11). What the tokens mean (greedy and its ties, the
    temperature/top-k/top-p filters, the stops) is ``tinker_std.sampling_rules``, shared by every
    backend; the loop is ours."""
    stop = StopRule.from_stop(params.stop, EOS_TOKEN_ID)  # EOS by default; a given stop replaces it
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < max_tokens:
        logits = forward(prompt + tokens, adapter)[-1]  # recompute the whole sequence: no KV cache
        token = choose_token(logits, params, generator)
        tokens.append(token)
        logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))  # temperature 1, unfiltered (SMP-3)
        if stop.reached(tokens, ByteTokenizer()):
            # the stop token stays in the output, and this is "stop" even on the last allowed token
            return SampledSequence(stop_reason="stop", tokens=tokens, logprobs=logprobs)  # SMP-8, SMP-9
    return SampledSequence(stop_reason="length", tokens=tokens, logprobs=logprobs)


# -- the backend -----------------------------------------------------------------------------------


@dataclass
class _TrainingModel:
    spec: ModelSpec
    adapter: Adapter
    optimizer: torch.optim.AdamW  # over the adapter's tensors only: the base model never changes


@dataclass
class _Sampler:
    spec: SamplerSpec
    adapter: Adapter | None  # None: the plain base model


class MinimalBackend(Backend):
    """A tiny float32 byte-level LM with LoRA; the worked example of spec/implementing-a-backend.md.

    Options: ``checkpoint_dir`` (root of the ``CheckpointStore``; ``$TINKER_STD_CHECKPOINT_DIR``
    or ``~/.cache/tinker-std/checkpoints`` when ``None``).
    """

    name: ClassVar[str] = "minimal"
    # Optional capabilities. Declared: what costs nothing here, since tinker_std.training_math evaluates
    # every loss and gathers (N, K) targets and CheckpointStore lists and deletes checkpoints.
    # Not declared: introspection (it needs read_state) and deterministic (a promise about the
    # hardware). seeded_sampling and topk_prompt_logprobs would be nearly free too (the shared
    # sampling rules already seed each sequence's generator and can rank prompt tokens), but they
    # stay undeclared so that this example also shows how the suite reports a capability left out:
    # its statements come out "skipped-not-declared", and requests for it fail with Unsupported.
    capabilities: ClassVar[Capabilities] = Capabilities(
        optional=frozenset({"loss:cispo", "loss:dro", "loss:gspo", "soft_targets", "checkpoint_management"}),
        tolerance="fp32",
    )

    def __init__(self, *, checkpoint_dir: str | Path | None = None) -> None:
        # Cheap on purpose (BE-2): the base weights are built lazily, on first use.
        self.checkpoint_store = CheckpointStore(checkpoint_dir)  # public name: checkpoint_management uses it
        self._models: dict[str, _TrainingModel] = {}
        self._samplers: dict[str, _Sampler] = {}

    # -- models and tokenizers ---------------------------------------------------------------------

    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return GetServerCapabilitiesResponse(
            supported_models=[SupportedModel(model_name=MODEL_NAME, max_context_length=CONTEXT)]
        )

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        _check_model(base_model)
        return ByteTokenizer()

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        _check_model(base_model)
        return self._register(Adapter.fresh(lora), optimizer_state=None)

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        if with_optimizer and path.checkpoint_type != "training":
            raise BadRequestError("path", f"{path.tinker_path} holds no optimizer state (CKPT-5)")
        adapter = self._read_adapter(path, "path", trainable=True)
        state = None
        if with_optimizer:
            state = torch.load(self.checkpoint_store.directory(path) / "optimizer.pt", weights_only=True)
        return self._register(adapter, state)

    async def release_model(self, model_id: str) -> None:
        self._models.pop(model_id, None)

    # -- training ----------------------------------------------------------------------------------

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        model = self._model(model_id)

        def logprobs(batch: Sequence[Datum]) -> list[torch.Tensor]:
            # One forward per datum, so a datum's numbers never depend on its batch (FB-6).
            out = []
            for datum in batch:
                logits = forward(datum.model_input.to_ints(), model.adapter)
                targets = datum.loss_fn_inputs["target_tokens"].to_torch().long()  # (N,), or (N, K): soft_targets
                out.append(target_logprobs(logits, targets))  # log_softmax gathered at the targets
            return out

        # run_forward_backward evaluates the loss, calls backward() when asked (gradients add up in
        # the parameters' .grad: FB-4) and builds the outputs and metrics (FB-2, FB-7).
        return run_forward_backward(logprobs, data, loss_fn, loss_fn_config, backward)

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        # Clipping, AdamW, the step counter, metrics and clearing the gradient (OPT-1..OPT-7, FB-5).
        return adamw_step(self._model(model_id).optimizer, params)

    # -- checkpoints -------------------------------------------------------------------------------
    # CheckpointStore maps a tinker:// path to a folder, refuses to overwrite without
    # overwrite=True (ConflictError, CKPT-3) and renames a finished temporary folder into place,
    # so a half-written checkpoint is never visible. We only write our files into the folder.

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        model = self._model(model_id)
        with self.checkpoint_store.writing(path, overwrite, _metadata(model.spec)) as folder:
            torch.save({n: p.detach().clone() for n, p in model.adapter.params.items()}, folder / "adapter.pt")
            torch.save(model.optimizer.state_dict(), folder / "optimizer.pt")  # m, v and t (OPT-8)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        model = self._model(model_id)
        with self.checkpoint_store.writing(path, overwrite, _metadata(model.spec)) as folder:
            torch.save({n: p.detach().clone() for n, p in model.adapter.params.items()}, folder / "adapter.pt")

    def _read_adapter(self, path: ParsedCheckpointTinkerPath, field: str, trainable: bool) -> Adapter:
        meta = self.checkpoint_store.read_metadata(path)  # NotFoundError when nothing is there (CKPT-8)
        if meta.get("backend") != self.name:
            raise BadRequestError(field, f"{path.tinker_path} was written by backend {meta.get('backend')!r} (CKPT-6)")
        tensors = torch.load(self.checkpoint_store.directory(path) / "adapter.pt", weights_only=True)
        wrap = torch.nn.Parameter if trainable else (lambda t: t)
        return Adapter(LoraConfig.model_validate(meta["lora"]), {n: wrap(t) for n, t in tensors.items()})

    # -- sampling ----------------------------------------------------------------------------------

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
            adapter = self._read_adapter(model_path, "model_path", trainable=False)
        elif model_id is not None:
            adapter = self._model(model_id).adapter.frozen_copy()  # a snapshot, not a view (SMP-14)
        spec = SamplerSpec(new_model_id("minimal-sampler"), MODEL_NAME, VOCAB_SIZE, CONTEXT)
        self._samplers[spec.sampler_id] = _Sampler(spec, adapter)
        return spec

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        sampler = self._samplers.get(sampler_id)
        if sampler is None:
            raise NotFoundError(f"sampler {sampler_id!r} does not exist")
        prompt, params = request.prompt, request.sampling_params
        max_tokens = token_budget(prompt, params, VOCAB_SIZE, CONTEXT)  # max_tokens or the rest of the context
        with torch.no_grad():
            # Sequence j draws from its own generator, seeded from (seed, j) when a seed is given.
            sequences = [
                generate(prompt, sampler.adapter, params, max_tokens, sequence_generator(params.seed, j))
                for j in range(request.num_samples)
            ]
            prompt_logprobs = None
            if request.include_prompt_logprobs:  # SMP-13; compute_logprobs is built on it (SMP-16)
                # top-k 0: topk_prompt_logprobs is not declared, so the client never asks for it
                prompt_logprobs, _ = prompt_scores(forward(prompt, sampler.adapter), prompt, True, 0)
        return SampleResponse(sequences=sequences, prompt_logprobs=prompt_logprobs, type="sample")

    # -- helpers -----------------------------------------------------------------------------------

    def _model(self, model_id: str) -> _TrainingModel:
        if model_id not in self._models:
            raise NotFoundError(f"training model {model_id!r} does not exist (or was released)")
        return self._models[model_id]

    def _register(self, adapter: Adapter, optimizer_state: dict[str, Any] | None) -> ModelSpec:
        # Every model gets a new id, which is also its training run id in checkpoint paths (CKPT-10).
        optimizer = torch.optim.AdamW(list(adapter.params.values()), foreach=False)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)  # the same parameter order as when it was saved
        spec = ModelSpec(new_model_id("minimal"), MODEL_NAME, VOCAB_SIZE, CONTEXT, adapter.config)
        self._models[spec.model_id] = _TrainingModel(spec, adapter, optimizer)
        return spec


def _check_model(base_model: str) -> None:
    if base_model != MODEL_NAME:  # ERR-4: the message lists the served models
        raise NotFoundError(f"base model {base_model!r} is not served by backend minimal; supported: [{MODEL_NAME}]")


def _metadata(spec: ModelSpec) -> dict[str, Any]:
    """What ``checkpoint.json`` records besides the path: enough to rebuild the model (CKPT-2, CKPT-6)."""
    return {"backend": MinimalBackend.name, "base_model": spec.base_model, "lora": spec.lora.model_dump()}


def _seed(seed: int | None) -> int:
    """A ``torch.Generator`` seed: the given one reduced to 63 bits, else a random one."""
    return seed % 2**63 if seed is not None else secrets.randbits(63)
