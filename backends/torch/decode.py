"""The torch backend's decode loop: many requests, one batch, KV-cached, one random stream per sequence.

``decode`` runs validated requests (``DecodeJob``, made by ``sampler.sample_batch``) on a model whose
adapters are already arranged (one active, or ``rows``: per-row segments) to completion:

1. All prompts run together once, left-padded to a common width (a multiple of ``BLOCK``) with
   explicit position ids, ``use_cache=True``. The logits give prompt logprobs and top-k prompt
   logprobs where asked for (only the last positions needed are computed), and each prompt's last
   position the first token's distribution.
2. Every sequence gets a row: its prompt's cache row, repeated ``num_samples`` times
   (``Cache.batch_select_indices``), and all live rows of all requests decode together, one forward
   per step over a ``(rows, 1)`` batch. A row that stops is dropped from the batch.
3. Batch invariance (SMP-12): on CPU each row attends alone (``row_attention.py``, its padding
   passed with every forward), and every adapter's group of rows is closed with filler rows to a
   multiple of ``BLOCK``; with the products of ``fast/packed.py`` and ``fast/merged.py`` a row's
   logits are bit-identical to those of the same request alone. Elsewhere rows attend through a
   padding mask and agree within float tolerance only.
4. Sequence ``j`` of a request draws from its own ``sequence_generator(seed, j)`` with exactly the
   draws of ``choose_token`` on a CPU ``float64`` copy of its logits row
   (``sampling_rules.choose_tokens``; draw rule 2 of SMP-20).
5. The key/value cache grows in place (``fast/kv_cache.py``) where rows attend alone; there the
   steps after the prompt pass run through ``fast/fused_decode.py`` (Llama, Qwen3; bit-identical
   to the model's forward, ``TorchSettings.fused_decode``).
6. ``logprobs[n]`` is the float32 ``log_softmax`` of the raw logits at the sampled token
   (temperature 1, no filtering): the quantity ``forward`` computes (SMP-3).
7. Incremental decode: a request with ``on_tokens`` (a ``TokenSink``) is told each token as
   ``_take_tokens`` takes it (the server's token-incremental OpenAI streams). A sink that raises
   (``SinkClosed``: its client went away) fails its own request only: its rows leave the batch at
   once and its slot holds a ``RequestFailedError``; the other rows decode on as if alone.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from tinker_std.backend import SampleRequest, SamplerSpec, SinkClosed, Tokenizer
from tinker_std.errors import RequestFailedError
from tinker_std.sampling_rules import (
    StopRule,
    alt_draws,
    choose_tokens,
    prompt_scores,
    sequence_generator,
    target_tensor,
    token_budget,
    top_logprobs,
)
from tinker_std.types import SampledSequence, SampleResponse, StopReason

from .fast import kv_cache
from .fast.fused_decode import FusedStep, fused_step
from .fast.row_segments import RowSegments, Segment
from .row_attention import ROW_PADS, rows_attend_alone, supports_row_attention

__all__ = ["BLOCK", "DecodeJob", "decode"]


#: Rows per block: on some CPUs (measured: AMD EPYC) MKL's float32 GEMM computes a row bit-identically
#: in any full block of 4 rows, whatever the other rows; so every matrix product here gets a multiple
#: of 4 rows (per adapter segment too) for products that are not packed (see point 3 above).
BLOCK = 4


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass
class DecodeJob:
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
    #: per sequence, the top-k raw logprobs of each sampled position (``topk_sample_logprobs``, SDK-6)
    tops: list[list[list[tuple[int, float]] | None]] = field(default_factory=list)
    #: set when its token sink raised: the request stops and answers this error
    error: RequestFailedError | None = None

    @classmethod
    def start(
        cls, slot: int, request: SampleRequest, spec: SamplerSpec, adapter: str | None, tokenizer: Tokenizer
    ) -> DecodeJob:
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
            tops=[[] for _ in range(n)],
        )

    @property
    def wants_prompt_scores(self) -> bool:
        return (
            self.request.include_prompt_logprobs
            or self.request.topk_prompt_logprobs > 0
            or self.request.target_prompt_ids is not None
            or self.request.prompt_alt_tokens_k > 0
        )


def _accepts(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _segments(names: Sequence[str | None]) -> list[Segment]:
    """The runs of consecutive equal entries of ``names`` as ``(start, stop, adapter, None)``
    segments (``None``: every position of a row is a real token to adapt)."""
    runs: list[Segment] = []
    for row, name in enumerate(names):
        if runs and runs[-1][2] == name:
            runs[-1] = (runs[-1][0], row + 1, name, None)
        else:
            runs.append((row, row + 1, name, None))
    return runs


#: A batch row: ``(b, j)`` is sequence ``j`` of job ``b``; ``None`` a filler row (see ``BLOCK``).
Slot = tuple[int, int] | None


def _layout(live: Sequence[tuple[int, int]], jobs: Sequence[DecodeJob]) -> list[Slot]:
    """``live`` (each adapter's rows contiguous) with filler rows closing every adapter's group to a
    multiple of ``BLOCK`` rows."""
    slots: list[Slot] = []
    for i, (b, j) in enumerate(live):
        slots.append((b, j))
        if i + 1 == len(live) or jobs[live[i + 1][0]].adapter != jobs[b].adapter:
            slots += [None] * (-len(slots) % BLOCK)
    return slots


def decode(
    model: Any,
    jobs: Sequence[DecodeJob],
    tokenizer: Tokenizer,
    device: torch.device,
    rows: RowSegments | None,
    fused: bool = False,
) -> list[SampleResponse | Exception]:
    """Run ``jobs`` (each adapter's jobs contiguous) to completion; the responses in job order
    (a ``RequestFailedError`` for a job whose token sink raised, see point 7).

    ``rows``: the per-row adapter selection installed on ``model``, or ``None`` when the (single)
    adapter is active already. On CPU, with ``row_attention`` (``supports_row_attention``) and
    every matrix product in full blocks of rows, each row's logits are bit-identical to what the
    same request gives alone; elsewhere (GPU kernels are not batch-invariant anyway) rows attend
    through a padding mask and agree within float tolerance only.

    ``fused`` (``TorchSettings.fused_decode``): where rows attend alone, decode steps run through
    ``fast/fused_decode.py``'s step when the model has one (Llama, Qwen3), bit-identical to the
    model's forward; the prompt pass always runs through the model."""
    alone = device.type == "cpu" and supports_row_attention(model)
    step = fused_step(model) if fused and alone else None
    with rows_attend_alone(model) if alone else nullcontext():
        return _run_loop(model, jobs, tokenizer, device, rows, alone, step)


@dataclass
class _Prompts:
    """The prompt pass's results: each job's prompt length and left padding, the attention mask
    (used where rows do not attend alone), the cache and the logits of the last positions."""

    lengths: list[int]
    pads: list[int]
    attention: torch.Tensor
    cache: Any
    logits: torch.Tensor


def _prompt_pass(
    model: Any, jobs: Sequence[DecodeJob], device: torch.device, rows: RowSegments | None, alone: bool
) -> _Prompts:
    """All prompts in one forward, left-padded to a multiple of ``BLOCK`` with explicit positions;
    only the last positions any job needs scores for keep their logits."""
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
        kwargs[ROW_PADS] = list(pads)
    elif max(pads) > 0:
        kwargs["attention_mask"] = attention
    if alone:  # plain full-attention layers (``supports_row_attention``): a cache that grows in place
        layers = model.config.get_text_config(decoder=True).num_hidden_layers
        kwargs["past_key_values"] = kv_cache.growing_cache(layers, max(job.max_tokens for job in jobs))
    if rows is not None:
        rows.segments = _segments([job.adapter for job in jobs])
    out = model(input_ids=ids.to(device), **kwargs)
    # logits: (jobs, >= keep_logits, V); prompt b ends at the last position
    return _Prompts(lengths, pads, attention, out.past_key_values, out.logits)


def _run_loop(
    model: Any,
    jobs: Sequence[DecodeJob],
    tokenizer: Tokenizer,
    device: torch.device,
    rows: RowSegments | None,
    alone: bool,
    fused: FusedStep | None,
) -> list[SampleResponse | Exception]:
    prompts = _prompt_pass(model, jobs, device, rows, alone)
    lengths, pads, attention, cache = prompts.lengths, prompts.pads, prompts.attention, prompts.cache
    scores = [
        (
            *prompt_scores(
                prompts.logits[b, -lengths[b] :].float(),
                job.request.prompt,
                job.request.include_prompt_logprobs,
                job.request.topk_prompt_logprobs,
            ),
            target_tensor(prompts.logits[b, -lengths[b] :].float(), job.request.target_prompt_ids),
            alt_draws(
                prompts.logits[b, -lengths[b] :].float(), job.request.prompt_alt_tokens_k, job.request.sampling_params
            ),
        )
        if job.wants_prompt_scores
        else (None, None, None, None)
        for b, job in enumerate(jobs)
    ]

    slots = _layout([(b, j) for b, job in enumerate(jobs) for j in range(job.request.num_samples)], jobs)
    cache_rows: list[int] = []  # the cache row holding each slot's context: at first its prompt's
    for slot in slots:
        cache_rows.append(slot[0] if slot is not None else cache_rows[-1])
    last = prompts.logits[:, -1].float()[torch.tensor(cache_rows, device=prompts.logits.device)]  # (slots, V)
    del prompts
    scratch = _Scratch()
    while True:
        kept = _take_tokens(last, slots, jobs, tokenizer, scratch)
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
        tokens, positions = _step_tokens(slots, jobs, lengths)
        step: dict[str, Any] = {"position_ids": torch.tensor(positions, device=device).unsqueeze(-1)}
        if alone:
            step[ROW_PADS] = [None if slot is None else pads[slot[0]] for slot in slots]
        else:
            attention = torch.cat([attention, attention.new_ones((len(slots), 1))], dim=1)
            if max(pads) > 0:
                step["attention_mask"] = attention
        step_input = torch.tensor(tokens, device=device).unsqueeze(-1)
        if fused is not None:
            last = fused(step_input, step["position_ids"], cache, step[ROW_PADS]).float()
        else:
            last = model(input_ids=step_input, past_key_values=cache, use_cache=True, **step).logits[:, -1].float()
    return _responses(jobs, scores)


class _Scratch:
    """Buffers the decode loop's steps reuse for their per-step copies of the logits: the float64
    copy ``_choose_rows`` draws from and the ``log_softmax`` of the logprobs. A fresh ``(rows,
    vocab)`` tensor every step costs more than its computation where the allocator hands large
    blocks back to the system between steps (measured: SmolLM2, 64 rows, the 25 MB float64 copy
    took 20 to 60 ms per step in page faults, 1.6 ms into memory used before)."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def _buffer(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        rows, vocab = shape
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] != vocab or buffer.device != device:
            buffer = self.buffers[dtype] = torch.empty((rows, vocab), dtype=dtype, device=device)
        return buffer[:rows]

    def float64_cpu(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits.to("cpu", torch.float64)`` (rows, V), valid until the next call."""
        return self._buffer(logits.shape, torch.float64, torch.device("cpu")).copy_(logits)

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """``torch.log_softmax(logits, dim=-1)`` (rows, V), valid until the next call."""
        return torch.log_softmax(logits, dim=-1, out=self._buffer(logits.shape, logits.dtype, logits.device))


def _take_tokens(
    last: torch.Tensor, slots: Sequence[Slot], jobs: Sequence[DecodeJob], tokenizer: Tokenizer, scratch: _Scratch
) -> list[tuple[int, int]]:
    """Choose every live row's next token from ``last`` (its logits, one row per slot), append it
    and its raw logprob to its sequence, and return the rows that go on (not stopped, not at
    ``max_tokens``, not failed by its token sink)."""
    real = [r for r, slot in enumerate(slots) if slot is not None]
    live = [(b, j) for b, j in (slot for slot in slots if slot is not None)]
    real_last = last if len(real) == len(slots) else last[torch.tensor(real, device=last.device)]
    chosen = _choose_rows(scratch.float64_cpu(real_last), live, jobs)
    raw = scratch.log_softmax(real_last)
    chosen_lps = raw.gather(-1, torch.tensor(chosen, device=raw.device).unsqueeze(-1)).squeeze(-1).tolist()
    kept: list[tuple[int, int]] = []
    for r, (b, j) in enumerate(live):
        job = jobs[b]
        if job.error is not None:  # its sink failed on an earlier sequence this step
            continue
        job.tokens[j].append(chosen[r])
        job.logprobs[j].append(float(chosen_lps[r]))
        if job.request.topk_sample_logprobs > 0:
            job.tops[j].append(top_logprobs(raw[r : r + 1], job.request.topk_sample_logprobs)[0])
        if job.request.on_tokens is not None:  # incremental decode: report the token as it is taken (TokenSink)
            top = job.tops[j][-1] if job.request.topk_sample_logprobs > 0 else None
            try:
                job.request.on_tokens(j, chosen[r], job.logprobs[j][-1], top)
            except Exception as exc:  # a sink's failure is its own request's, never the batch's
                job.error = _sink_error(exc)
                continue
        if job.stop.reached(job.tokens[j], tokenizer):
            job.reasons[j] = "stop"
        elif len(job.tokens[j]) < job.max_tokens:
            kept.append((b, j))
    return [(b, j) for b, j in kept if jobs[b].error is None]


def _sink_error(exc: Exception) -> RequestFailedError:
    """The error of a request whose token sink raised ``exc`` (chained as its cause)."""
    if isinstance(exc, SinkClosed):
        error = RequestFailedError(f"the token sink closed the request: {exc}", category="user")
    else:
        error = RequestFailedError(f"the token sink raised {type(exc).__name__}: {exc}", category="server")
    error.__cause__ = exc
    return error


def _step_tokens(
    slots: Sequence[Slot], jobs: Sequence[DecodeJob], lengths: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The next step's input token and position of every slot (a filler row copies the row before it)."""
    tokens: list[int] = []
    positions: list[int] = []
    for slot in slots:
        if slot is None:
            tokens.append(tokens[-1])
            positions.append(positions[-1])
        else:
            b, j = slot
            tokens.append(jobs[b].tokens[j][-1])
            positions.append(lengths[b] + len(jobs[b].tokens[j]) - 1)
    return tokens, positions


def _responses(
    jobs: Sequence[DecodeJob], scores: Sequence[tuple[Any, Any, Any, Any]]
) -> list[SampleResponse | Exception]:
    """Each job's response: its sequences, prompt logprobs, top-k and target prompt logprobs, prompt
    draws; or the error of a job whose token sink raised."""
    responses: list[SampleResponse | Exception] = []
    for job, (lps, tops, targets, alts) in zip(jobs, scores, strict=True):
        if job.error is not None:
            responses.append(job.error)
            continue
        want_tops = job.request.topk_sample_logprobs > 0
        sequences = [
            SampledSequence(
                stop_reason=reason,
                tokens=tokens,
                logprobs=logprobs,
                sequence_id=uuid.uuid4().hex,
                topk_logprobs=tops if want_tops else None,
            )
            for tokens, logprobs, reason, tops in zip(job.tokens, job.logprobs, job.reasons, job.tops, strict=True)
        ]
        responses.append(
            SampleResponse(
                sequences=sequences,
                prompt_logprobs=lps,
                topk_prompt_logprobs=tops,
                target_prompt_logprobs=targets,
                prompt_alt_tokens=alts,
                type="sample",
            )
        )
    return responses


def _choose_rows(last: torch.Tensor, live: Sequence[tuple[int, int]], jobs: Sequence[DecodeJob]) -> list[int]:
    """The next token of every live row (``last``: their float64 CPU logits), each from its own
    generator (see ``choose_tokens``)."""
    params = [jobs[b].request.sampling_params for b, _ in live]
    return choose_tokens(last, params, [jobs[b].generators[j] for b, j in live])
