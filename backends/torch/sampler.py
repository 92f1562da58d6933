"""Sampling requests of the torch backend: many requests on one base model, one decode loop.

``sample_batch`` answers several requests at once (semantics from ``tinker_std.sampling_rules``,
shared with every backend; this module only arranges the model):

1. Each request is validated on its own (``token_budget``); a bad one gets its error and the rest
   go on. The others are ordered so that each adapter's requests, and later their rows, are
   contiguous.
2. The model is arranged for the batch's adapters. On CPU the frozen base weights compute from
   oneDNN-packed copies (``fast/packed.py``), and each sampled adapter's LoRA layers from its own
   merged, packed copy ``W + scaling * B @ A`` (``fast/merged.py``), whether the batch holds one
   adapter or several; with several, each layer runs one product per run of rows of the same
   adapter (``fast/row_segments.py``, updated by the loop as rows stop). Where merging does not
   apply (``TorchSettings.merged_lora`` or ``packed_weights`` off, other devices, LoRA layers other
   than plain ``Linear``) one adapter is activated and called directly (``fast/direct_lora.py``),
   several run through ``fast/per_row.py``.
3. ``decode.decode`` runs the loop (``decode.py``: batch invariance, random streams, cache).

Batch invariance (SMP-12): a row's logits are bit-identical to those of the same request alone
(and of the same sequence under another ``num_samples``), so seeded outputs do not depend on what
else is batched. MKL's GEMM computes a row differently depending on how many rows there are, so
every product of the frozen base and of the batch's adapters (merged, or on the unmerged path their
factors) runs from oneDNN-packed weights, probed to be row-independent (``fast/packed.py``); and the
loop's filler rows (``decode.BLOCK``) keep MKL's path (a weight that fails the probe, or packing
off) bit-exact on CPUs where full 4-row blocks are row-independent (AMD EPYC, not Intel AVX-512).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tinker_std.backend import SampleRequest, SamplerSpec, Tokenizer
from tinker_std.errors import BadRequestError
from tinker_std.types import SampleResponse

from . import adapters
from .decode import DecodeJob, decode
from .fast import merged, packed, per_row
from .fast.direct_lora import direct_lora
from .fast.row_segments import RowSegments
from .settings import TorchSettings

__all__ = ["SampleItem", "sample_batch"]


@dataclass(frozen=True)
class SampleItem:
    """One request of a batch: ``request`` for sampler ``spec``, whose weights are the base model
    plus peft adapter ``adapter`` (``None``: the plain base model)."""

    request: SampleRequest
    spec: SamplerSpec
    adapter: str | None


def sample_batch(
    model: Any, items: Sequence[SampleItem], tokenizer: Tokenizer, device: torch.device, settings: TorchSettings
) -> list[SampleResponse | Exception]:
    """Answer every item in one decode loop (under ``torch.inference_mode``); slot ``i`` of the
    result answers ``items[i]``.

    All items share ``model`` (the base model holding every named adapter) and ``tokenizer``. An
    item that fails validation (``BadRequestError`` for an empty prompt or a token id outside the
    vocabulary, ``ContextLengthError`` when ``prompt + max_tokens`` does not fit: SMP-1, SMP-2) gets
    its exception in its slot and does not affect the others; an error while running the model
    fails the whole call. Every item's logits are those it gets alone (bit-identical on CPU
    float32 with SDPA attention, see the module docstring; within float tolerance otherwise), so
    with a seed its tokens are the same too. ``settings``: the fast paths allowed. On return the
    adapter state of ``model`` is unspecified: callers ``activate`` before their next
    single-adapter pass.
    """
    results: list[SampleResponse | Exception | None] = [None] * len(items)
    jobs: list[DecodeJob] = []
    for slot, item in enumerate(items):
        try:
            jobs.append(DecodeJob.start(slot, item.request, item.spec, item.adapter, tokenizer))
        except BadRequestError as exc:
            results[slot] = exc
    order = {name: rank for rank, name in enumerate(dict.fromkeys(job.adapter for job in jobs))}
    jobs.sort(key=lambda job: order[job.adapter])  # stable: each adapter's jobs contiguous, in item order
    if jobs:
        with torch.inference_mode(), _packed(model, device, list(order), settings):
            if len(order) == 1:
                with _merged(model, device, list(order), settings) as merged_on:
                    if not merged_on:  # the merged layers do not look at which adapter is active
                        adapters.activate(model, jobs[0].adapter, trainable=False)
                    with nullcontext() if merged_on else direct_lora(model, jobs[0].adapter):
                        responses = decode(model, jobs, tokenizer, device, None, settings.fused_decode)
            else:
                state = RowSegments([])
                with _merged(model, device, list(order), settings, state) as merged_on:
                    with nullcontext(state) if merged_on else per_row.per_row_adapters(model, []) as rows:
                        responses = decode(model, jobs, tokenizer, device, rows, settings.fused_decode)
        for job, response in zip(jobs, responses, strict=True):
            results[job.slot] = response
    answered = [r for r in results if r is not None]
    assert len(answered) == len(items)
    return answered


def _packed(
    model: Any, device: torch.device, names: Sequence[str | None], settings: TorchSettings
) -> contextlib.AbstractContextManager[Any]:
    """On CPU: the frozen base weights and the LoRA factors of adapters ``names`` computed from
    oneDNN-packed copies (``fast/packed.py``), unless ``settings.packed_weights`` is off."""
    names_here = {name for name in names if name is not None}
    if device.type != "cpu":
        return nullcontext()
    return packed.packed_linears(model, names_here, enabled=settings.packed_weights)


def _merged(
    model: Any,
    device: torch.device,
    names: Sequence[str | None],
    settings: TorchSettings,
    rows: RowSegments | None = None,
) -> contextlib.AbstractContextManager[bool]:
    """On CPU, with ``settings.merged_lora`` and ``packed_weights`` on: the LoRA layers compute
    adapters ``names`` from merged, packed weights (``fast/merged.py``; with ``rows``, each row
    segment its own adapter's); yields whether they do."""
    if device.type != "cpu" or not (settings.merged_lora and settings.packed_weights):
        return nullcontext(False)
    segments = None if rows is None else (lambda: rows.segments)
    return merged.merged_lora_linears(model, names, segments, capacity=settings.merged_adapters)
