"""The decode loop of the torch backend: one batch for many requests, KV-cached, one random stream
per sequence.

Semantics come from ``tinker_std.sampling_rules`` (shared with every backend); this module only
runs the model. ``sample_batch`` answers several requests on one base model at once (``sample`` is
the same loop for one request, with its adapter already active):

1. Each request is validated on its own (``token_budget``); a bad one gets its error and the rest
   go on. The others are ordered so that each adapter's requests, and later their rows, are
   contiguous.
2. All prompts run together once, left-padded to a common width (a multiple of 4) with explicit
   position ids, ``use_cache=True``. The logits give prompt logprobs and top-k prompt logprobs
   where asked for (only the last positions needed are computed), and each prompt's last position
   the first token's distribution.
3. Every sequence gets a row: its prompt's cache row, repeated ``num_samples`` times
   (``Cache.batch_select_indices``), and all live rows of all requests decode together, one forward
   per step over a ``(rows, 1)`` batch. A row that stops is dropped from the batch.
4. On CPU the frozen base weights are computed from oneDNN-packed copies (``packed.py``: about
   twice as fast at decode batch sizes, probed for the row independence point 5 needs), and each
   sampled adapter's LoRA layers from its own merged, packed copy ``W + scaling * B @ A``
   (``merged.py``: one product per layer instead of three plus peft's bookkeeping; cached per
   adapter), always, whether the batch holds one adapter or several; with several, each layer runs
   one product per run of rows of the same adapter (segments recomputed whenever rows are
   dropped). Where merging does not apply (``TINKER_STD_MERGED_LORA=0``, packing off, other
   devices, LoRA layers other than plain ``Linear``) the unmerged path runs: with one adapter it is
   activated and, for plain LoRA layers, called directly (``_direct_lora``: the same operations as
   peft's forward without its per-call bookkeeping); with several, ``per_row_adapters`` runs each
   adapter on its own rows.
5. Batch invariance: a row's logits are bit-identical to those of the same request alone (and of
   the same sequence under another ``num_samples``), so seeded outputs do not depend on what else
   is batched (SMP-12). Two things would break that and are avoided: SDPA splits its work by
   batch size, so each row attends alone over its own positions (``_row_attention``, which also
   makes left padding invisible; other attention implementations and devices other than the CPU
   fall back to a padding mask and agree within float tolerance only); and MKL's GEMM computes a
   row differently depending on how many rows there are, so every product of the frozen base and
   of the batch's adapters (merged, or on the unmerged path their factors) runs from oneDNN-packed
   weights, probed to be row-independent (``packed.py``). Every adapter's group of rows is also
   closed with filler rows to a multiple of 4, which keeps MKL's path (a weight that fails the
   probe, or ``TINKER_STD_PACKED_WEIGHTS=0``) bit-exact on CPUs where full 4-row blocks are
   row-independent (AMD EPYC, not Intel AVX-512).
6. Sequence ``j`` of a request draws from its own ``sequence_generator(seed, j)`` with exactly the
   draws of ``choose_token`` on a CPU ``float64`` copy of its logits row (``choose_tokens``; draw
   rule 2 of SMP-20: no sort unless top-k / top-p is set).
7. The key/value cache grows in place (``kv_cache.py``) where rows attend alone, instead of by
   one concatenation per layer and step.
8. ``logprobs[n]`` is the float32 ``log_softmax`` of the raw logits at the sampled token
   (temperature 1, no filtering): the quantity ``forward`` computes (SMP-3).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinker_std.backend import SampleRequest, SamplerSpec, Tokenizer
from tinker_std.errors import BadRequestError
from tinker_std.sampling_rules import (
    StopRule,
    choose_token,
    draw_in_id_order,
    filters_active,
    kept_count,
    prompt_scores,
    sequence_generator,
    token_budget,
)
from tinker_std.types import SampledSequence, SampleResponse, SamplingParams, StopReason

from . import adapters, kv_cache, merged, module_walk, packed

__all__ = ["SampleItem", "choose_tokens", "sample", "sample_batch"]


@dataclass(frozen=True)
class SampleItem:
    """One request of a batch: ``request`` for sampler ``spec``, whose weights are the base model
    plus peft adapter ``adapter`` (``None``: the plain base model)."""

    request: SampleRequest
    spec: SamplerSpec
    adapter: str | None


def sample(
    model: Any, request: SampleRequest, spec: SamplerSpec, tokenizer: Tokenizer, device: torch.device
) -> SampleResponse:
    """Answer one sampling request with ``model`` (a Hugging Face causal LM with the right adapter
    already active), under ``torch.inference_mode``.

    ``BadRequestError`` (field ``prompt``) for an empty prompt or a token id outside the vocabulary;
    ``ContextLengthError`` when ``prompt + max_tokens`` does not fit (SMP-2)."""
    job = _Job.start(0, request, spec, None, tokenizer)
    names = _active_adapters(model)
    with torch.inference_mode(), _packed(model, device, names):
        with _merged(model, device, names[:1]) if len(names) <= 1 else nullcontext():
            return _decode(model, [job], tokenizer, device, None)[0]


def sample_batch(
    model: Any, items: Sequence[SampleItem], tokenizer: Tokenizer, device: torch.device
) -> list[SampleResponse | Exception]:
    """Answer every item in one decode loop (under ``torch.inference_mode``); slot ``i`` of the
    result answers ``items[i]``.

    All items share ``model`` (the base model holding every named adapter) and ``tokenizer``. An
    item that fails validation (``BadRequestError`` / ``ContextLengthError``, as ``sample`` raises
    them) gets its exception in its slot and does not affect the others; an error while running
    the model fails the whole call. Every item's logits are those ``sample`` computes for it alone
    (bit-identical on CPU float32 with SDPA attention, see the module docstring; within float
    tolerance otherwise), so with a seed its tokens are the same too. On return the adapter state
    of ``model`` is unspecified: callers ``activate`` before their next single-adapter pass.
    """
    results: list[SampleResponse | Exception | None] = [None] * len(items)
    jobs: list[_Job] = []
    for slot, item in enumerate(items):
        try:
            jobs.append(_Job.start(slot, item.request, item.spec, item.adapter, tokenizer))
        except BadRequestError as exc:
            results[slot] = exc
    order = {name: rank for rank, name in enumerate(dict.fromkeys(job.adapter for job in jobs))}
    jobs.sort(key=lambda job: order[job.adapter])  # stable: each adapter's jobs contiguous, in item order
    if jobs:
        with torch.inference_mode(), _packed(model, device, list(order)):
            if len(order) == 1:
                with _merged(model, device, list(order)) as merged_on:
                    if not merged_on:  # the merged layers do not look at which adapter is active
                        adapters.activate(model, jobs[0].adapter, trainable=False)
                    with nullcontext() if merged_on else _direct_lora(model, jobs[0].adapter):
                        responses = _decode(model, jobs, tokenizer, device, None)
            else:
                state = adapters.RowSegments([])
                with _merged(model, device, list(order), state) as merged_on:
                    with nullcontext(state) if merged_on else adapters.per_row_adapters(model, []) as rows:
                        responses = _decode(model, jobs, tokenizer, device, rows)
        for job, response in zip(jobs, responses, strict=True):
            results[job.slot] = response
    answered = [r for r in results if r is not None]
    assert len(answered) == len(items)
    return answered


def choose_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """``[choose_token(logits[r], params[r], generators[r]) for r ...]``: the same tokens from the
    same single uniform draw per row, only faster for filtered rows of CPU ``float64`` logits.

    Draw rule 2 (SMP-20) needs the sorted order only to find the tokens top-k / top-p keep, and
    ``kept_count`` sees only the sorted *values*, which any sort gives identically; numpy's value
    sort is several times faster than torch's stable argsort at 50k entries. The kept set is then
    found in O(V): every probability above the value at the cut, plus the lowest ids among those
    equal to it (the stable order breaks ties by lower id). Rows without filters, greedy rows, rows
    off the CPU and rows whose probabilities hold NaN go through ``choose_token``.
    """
    return [_choose(row, p, generator) for row, p, generator in zip(logits, params, generators, strict=True)]


def _choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature == 0 or not filters_active(params) or logits.device.type != "cpu":
        return choose_token(logits, params, generator)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    ascending = np.sort(probs.numpy())
    if np.isnan(ascending[-1]):  # NaN sorts last
        return choose_token(logits, params, generator)
    descending = torch.from_numpy(ascending).flip(0)  # a fresh tensor, as torch.sort returns
    count = kept_count(descending, params)
    cut = descending[count - 1]
    keep = probs > cut
    ties = torch.nonzero(probs == cut).squeeze(-1)[: count - int(keep.sum())]
    keep[ties] = True
    return draw_in_id_order(torch.where(keep, probs, torch.zeros_like(probs)), generator)


@dataclass
class _Job:
    """One validated request and the state of its sequences."""

    slot: int
    request: SampleRequest
    adapter: str | None
    max_tokens: int
    stop: StopRule
    generators: list[torch.Generator]
    tokens: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    reasons: list[StopReason] = field(default_factory=list)

    @classmethod
    def start(
        cls, slot: int, request: SampleRequest, spec: SamplerSpec, adapter: str | None, tokenizer: Tokenizer
    ) -> _Job:
        """Validate ``request`` (``token_budget``) and set up its sequences."""
        params = request.sampling_params
        max_tokens = token_budget(request.prompt, params, spec.vocab_size, spec.max_context_length)
        n = request.num_samples
        return cls(
            slot=slot,
            request=request,
            adapter=adapter,
            max_tokens=max_tokens,
            stop=StopRule.from_stop(params.stop, tokenizer.eos_token_id),
            generators=[sequence_generator(params.seed, j) for j in range(n)],
            tokens=[[] for _ in range(n)],
            logprobs=[[] for _ in range(n)],
            reasons=["length"] * n,
        )

    @property
    def wants_prompt_scores(self) -> bool:
        return self.request.include_prompt_logprobs or self.request.topk_prompt_logprobs > 0


def _packed(model: Any, device: torch.device, names: Sequence[str | None]) -> contextlib.AbstractContextManager[Any]:
    """On CPU: the frozen base weights and the LoRA factors of adapters ``names`` computed from
    oneDNN-packed copies (``packed.py``)."""
    adapters = {name for name in names if name is not None}
    return packed.packed_linears(model, adapters) if device.type == "cpu" else nullcontext()


def _merged(
    model: Any, device: torch.device, names: Sequence[str | None], rows: adapters.RowSegments | None = None
) -> contextlib.AbstractContextManager[bool]:
    """On CPU: the LoRA layers compute adapters ``names`` from merged, packed weights
    (``merged.py``; with ``rows``, each row segment its own adapter's); yields whether they do."""
    if device.type != "cpu":
        return nullcontext(False)
    return merged.merged_lora_linears(model, names, None if rows is None else (lambda: rows.segments))


def _active_adapters(model: Any) -> list[str | None]:
    """The adapters active on ``model``'s LoRA layers (none when adapters are disabled)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in module_walk.modules(model):
        if isinstance(module, BaseTunerLayer):
            return [] if module.disable_adapters else list(module.active_adapters)
    return []


def _accepts(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


#: Rows per block: on some CPUs (measured: AMD EPYC) MKL's float32 GEMM computes a row bit-identically
#: in any full block of 4 rows, whatever the other rows; so every matrix product here gets a multiple
#: of 4 rows (per adapter segment too) for products that are not packed (see point 5 above).
_BLOCK = 4
_ROW_ATTENTION = "tinker_std_rows"
_row_state = threading.local()


def _round_up(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _row_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: batch row ``r`` attends as if alone over its own
    positions, from ``_row_state.pads[r]`` on, with ``scaled_dot_product_attention`` (causal over a
    whole prompt, unmasked for one new token); filler rows (pad ``None``) get zeros. SDPA's work
    split depends on the batch size when it runs on several threads, so there each row is a batch
    of one; with one intra-op thread, where SDPA computes every (row, head) on its own the same way
    whatever the batch (measured: bit-equal, prompt and decode shapes), each run of consecutive rows
    with the same padding is one call. Either way a row's attention is independent of the rest of
    the batch and of its left padding."""
    _, heads, q_len, _ = query.shape
    if q_len != 1 and q_len != key.shape[2]:
        raise NotImplementedError("row attention runs whole prompts or one new token at a time")
    gqa = heads != key.shape[1]
    runs: list[tuple[int, int, int | None]] = []  # (start, stop, pad)
    together = torch.get_num_threads() == 1
    for r, pad in enumerate(_row_state.pads):
        if together and runs and runs[-1][2] == pad:
            runs[-1] = (runs[-1][0], r + 1, pad)
        else:
            runs.append((r, r + 1, pad))
    rows = []
    for start, stop, pad in runs:
        if pad is None:
            rows.append(query.new_zeros((stop - start, q_len, heads, value.shape[-1])))
            continue
        first = pad if q_len > 1 else 0
        row = torch.nn.functional.scaled_dot_product_attention(
            query[start:stop, :, first:],
            key[start:stop, :, pad:],
            value[start:stop, :, pad:],
            scale=kwargs.get("scaling"),
            is_causal=q_len > 1,
            enable_gqa=gqa,
        ).transpose(1, 2)
        rows.append(torch.nn.functional.pad(row, (0, 0, 0, 0, first, 0)) if first else row)
    return (rows[0] if len(rows) == 1 else torch.cat(rows)).contiguous(), None


def _supports_row_attention(model: Any) -> bool:
    """Plain causal full attention through ``sdpa`` (no sliding windows), looked up in transformers'
    attention interface, where ``_row_attention`` computes exactly what the model would."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    can_set = getattr(model, "_can_set_attn_implementation", None)
    return (
        config._attn_implementation == "sdpa"
        and getattr(config, "sliding_window", None) is None
        and all(kind == "full_attention" for kind in layer_types)
        and callable(can_set)
        and bool(can_set())
    )


@contextmanager
def _rows_attend_alone(model: Any) -> Iterator[None]:
    """Within: ``model`` attends through ``_row_attention`` (then it builds no attention mask)."""
    from transformers import AttentionInterface

    AttentionInterface.register(_ROW_ATTENTION, _row_attention)
    before = model.config._attn_implementation
    model.config._attn_implementation = _ROW_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = before
        _row_state.pads = None


@contextmanager
def _direct_lora(model: Any, name: str | None) -> Iterator[None]:
    """Within: every peft LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(x)) * scaling`` of
    adapter ``name`` (just ``base(x)`` where it has none, or when ``name`` is ``None``) directly:
    the operations of peft's forward with ``name`` active, without its per-call bookkeeping (about
    6% of a SmolLM2 decode step on CPU). A no-op unless every layer is a plain, unmerged LoRA
    ``Linear`` without dropout or variant (DoRA and the like) for ``name``."""
    from peft.tuners.lora import Linear, LoraLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    plain = all(
        isinstance(layer, Linear)
        and not layer.merged
        and (
            name is None
            or name not in layer.lora_A
            or (name not in layer.lora_variant and isinstance(layer.lora_dropout[name], torch.nn.Identity))
        )
        for layer in layers
    )
    if not plain:
        yield
        return
    try:
        for layer in layers:
            layer.forward = _direct_forward(layer, name)
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def _direct_forward(layer: Any, name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain function, never a module: assigning a module to ``layer.forward`` would register it
    as a child module named ``forward`` instead of overriding the method."""
    base = layer.base_layer
    if name is None or name not in layer.lora_A:

        def base_only(x: torch.Tensor) -> torch.Tensor:
            result: torch.Tensor = base(x)
            return result

        return base_only
    lora_a, lora_b, scaling = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
    linear = torch.nn.functional.linear
    if type(lora_a) is not torch.nn.Linear or type(lora_b) is not torch.nn.Linear or lora_a.bias is not None:
        linear_a, linear_b = lora_a, lora_b
    elif "forward" in lora_a.__dict__ and "forward" in lora_b.__dict__:  # packed (``_packed``): plain functions
        linear_a, linear_b = lora_a.__dict__["forward"], lora_b.__dict__["forward"]
    else:  # the same products as the modules' forward, without two module calls per layer
        a, b = lora_a.weight, lora_b.weight

        def linear_a(x: torch.Tensor) -> torch.Tensor:
            return linear(x, a)

        def linear_b(x: torch.Tensor) -> torch.Tensor:
            return linear(x, b)

    dtype = lora_a.weight.dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = base(x)
        delta: torch.Tensor = linear_b(linear_a(x if x.dtype == dtype else x.to(dtype))) * scaling
        out = result + delta
        return out if out.dtype == result.dtype else out.to(result.dtype)

    return forward


def _segments(names: Sequence[str | None]) -> list[adapters.Segment]:
    """The runs of consecutive equal entries of ``names`` as ``(start, stop, adapter, None)``
    segments (``None``: every position of a row is a real token to adapt)."""
    runs: list[adapters.Segment] = []
    for row, name in enumerate(names):
        if runs and runs[-1][2] == name:
            runs[-1] = (runs[-1][0], row + 1, name, None)
        else:
            runs.append((row, row + 1, name, None))
    return runs


#: A batch row: ``(b, j)`` is sequence ``j`` of job ``b``; ``None`` a filler row (see ``_BLOCK``).
Slot = tuple[int, int] | None


def _layout(live: Sequence[tuple[int, int]], jobs: Sequence[_Job]) -> list[Slot]:
    """``live`` (each adapter's rows contiguous) with filler rows closing every adapter's group to a
    multiple of ``_BLOCK`` rows."""
    slots: list[Slot] = []
    for i, (b, j) in enumerate(live):
        slots.append((b, j))
        if i + 1 == len(live) or jobs[live[i + 1][0]].adapter != jobs[b].adapter:
            slots += [None] * (-len(slots) % _BLOCK)
    return slots


def _decode(
    model: Any, jobs: Sequence[_Job], tokenizer: Tokenizer, device: torch.device, rows: adapters.RowSegments | None
) -> list[SampleResponse]:
    """Run ``jobs`` (each adapter's jobs contiguous) to completion; the responses in job order.

    ``rows``: the per-row adapter selection installed on ``model``, or ``None`` when the (single)
    adapter is active already. On CPU, with ``_row_attention`` (``_supports_row_attention``) and
    every matrix product in full blocks of rows, each row's logits are bit-identical to what the
    same request gives alone; elsewhere (GPU kernels are not batch-invariant anyway) rows attend
    through a padding mask and agree within float tolerance only."""
    alone = device.type == "cpu" and _supports_row_attention(model)
    with _rows_attend_alone(model) if alone else nullcontext():
        return _run(model, jobs, tokenizer, device, rows, alone)


def _run(
    model: Any,
    jobs: Sequence[_Job],
    tokenizer: Tokenizer,
    device: torch.device,
    rows: adapters.RowSegments | None,
    alone: bool,
) -> list[SampleResponse]:
    lengths = [len(job.request.prompt) for job in jobs]
    width = _round_up(max(lengths))
    pads = [width - n for n in lengths]
    ids = torch.zeros((len(jobs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, job in enumerate(jobs):
        ids[b, pads[b] :] = torch.tensor(job.request.prompt, dtype=torch.long)
        mask[b, pads[b] :] = 1
    kwargs: dict[str, Any] = {"use_cache": True, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(device)}
    keep_logits = _round_up(
        max((n for n, job in zip(lengths, jobs, strict=True) if job.wants_prompt_scores), default=1)
    )
    if keep_logits < width and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep_logits
    attention = mask.to(device)
    if alone:
        _row_state.pads = list(pads)
    elif max(pads) > 0:
        kwargs["attention_mask"] = attention
    if alone:  # plain full-attention layers (``_supports_row_attention``): a cache that grows in place
        layers = model.config.get_text_config(decoder=True).num_hidden_layers
        kwargs["past_key_values"] = kv_cache.growing_cache(layers, max(job.max_tokens for job in jobs))
    if rows is not None:
        rows.segments = _segments([job.adapter for job in jobs])
    out = model(input_ids=ids.to(device), **kwargs)
    logits = out.logits  # (jobs, >= keep_logits, V); prompt b ends at the last position
    cache = out.past_key_values
    scores = [
        prompt_scores(
            logits[b, -lengths[b] :].float(),
            job.request.prompt,
            job.request.include_prompt_logprobs,
            job.request.topk_prompt_logprobs,
        )
        if job.wants_prompt_scores
        else (None, None)
        for b, job in enumerate(jobs)
    ]

    slots = _layout([(b, j) for b, job in enumerate(jobs) for j in range(job.request.num_samples)], jobs)
    cache_rows: list[int] = []  # the cache row holding each slot's context: at first its prompt's
    for slot in slots:
        cache_rows.append(slot[0] if slot is not None else cache_rows[-1])
    last = logits[:, -1].float()[torch.tensor(cache_rows, device=logits.device)]  # (slots, V)
    del out, logits
    while True:
        real = [r for r, slot in enumerate(slots) if slot is not None]
        live = [(b, j) for b, j in (slot for slot in slots if slot is not None)]
        real_last = last[torch.tensor(real, device=last.device)]
        chosen = _choose_rows(real_last, live, jobs)
        raw = torch.log_softmax(real_last, dim=-1)
        chosen_lps = raw.gather(-1, torch.tensor(chosen, device=raw.device).unsqueeze(-1)).squeeze(-1).tolist()
        kept: list[tuple[int, int]] = []
        for r, (b, j) in enumerate(live):
            job = jobs[b]
            job.tokens[j].append(chosen[r])
            job.logprobs[j].append(float(chosen_lps[r]))
            if job.stop.reached(job.tokens[j], tokenizer):
                job.reasons[j] = "stop"
            elif len(job.tokens[j]) < job.max_tokens:
                kept.append((b, j))
        if not kept:
            break
        where = {slot: r for r, slot in enumerate(slots) if slot is not None}
        new_slots = _layout(kept, jobs)
        select: list[int] = []
        for slot in new_slots:
            select.append(cache_rows[where[slot]] if slot is not None else select[-1])
        if select != list(range(len(slots))):
            index = torch.tensor(select, device=device)
            cache.batch_select_indices(index)
            if not alone:
                attention = attention[index]
        slots, cache_rows = new_slots, list(range(len(new_slots)))
        if rows is not None:
            names: list[str | None] = []
            for slot in slots:
                names.append(jobs[slot[0]].adapter if slot is not None else names[-1])
            rows.segments = _segments(names)
        tokens: list[int] = []
        positions: list[int] = []
        for slot in slots:
            if slot is None:  # filler: a copy of the row before it
                tokens.append(tokens[-1])
                positions.append(positions[-1])
            else:
                b, j = slot
                tokens.append(jobs[b].tokens[j][-1])
                positions.append(lengths[b] + len(jobs[b].tokens[j]) - 1)
        step: dict[str, Any] = {"position_ids": torch.tensor(positions, device=device).unsqueeze(-1)}
        if alone:
            _row_state.pads = [None if slot is None else pads[slot[0]] for slot in slots]
        else:
            attention = torch.cat([attention, attention.new_ones((len(slots), 1))], dim=1)
            if max(pads) > 0:
                step["attention_mask"] = attention
        step_input = torch.tensor(tokens, device=device).unsqueeze(-1)
        last = model(input_ids=step_input, past_key_values=cache, use_cache=True, **step).logits[:, -1].float()

    responses = []
    for job, (lps, tops) in zip(jobs, scores, strict=True):
        sequences = [
            SampledSequence(stop_reason=reason, tokens=tokens, logprobs=logprobs, sequence_id=uuid.uuid4().hex)
            for tokens, logprobs, reason in zip(job.tokens, job.logprobs, job.reasons, strict=True)
        ]
        responses.append(
            SampleResponse(sequences=sequences, prompt_logprobs=lps, topk_prompt_logprobs=tops, type="sample")
        )
    return responses


def _choose_rows(last: torch.Tensor, live: Sequence[tuple[int, int]], jobs: Sequence[_Job]) -> list[int]:
    """The next token of every live row, each from its own generator (see ``choose_tokens``)."""
    params = [jobs[b].request.sampling_params for b, _ in live]
    return choose_tokens(last.to("cpu", torch.float64), params, [jobs[b].generators[j] for b, j in live])
