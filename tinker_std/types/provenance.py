"""Provenance spans: where each position of a ``Datum`` came from (field-compatible with tinker 0.38).

A datum's ``model_input_spans`` tile its input tokens and its ``loss_fn_input_spans`` tile its
``target_tokens`` rows, each as consecutive runs (position comes from order). A run names the
``SampledSequence.sequence_id`` of a sample drawn with ``record_stability_info=True`` and claims
that its positions are ``[offset, offset + length)`` of that request's prompt
(``PromptProvenanceSpan``) or of that sequence's sampled tokens (``SampledProvenanceSpan``).
``stable_reinforce`` (spec LOSS-16..LOSS-19) checks every claim against what the sampler recorded.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import RequestModel

__all__ = ["PromptProvenanceSpan", "SampledProvenanceSpan", "ProvenanceSpan", "ProvenanceSpans"]


class PromptProvenanceSpan(RequestModel):
    """A run of positions that are positions ``[offset, offset + length)`` of the prompt of the
    sampling request that produced sequence ``sequence_id``."""

    sequence_id: str = Field(min_length=1)
    offset: int = Field(default=0, ge=0)
    length: int = Field(ge=0)
    type: Literal["prompt_tokens"] = "prompt_tokens"


class SampledProvenanceSpan(RequestModel):
    """A run of positions that are positions ``[offset, offset + length)`` of the sampled tokens
    of sequence ``sequence_id``."""

    sequence_id: str = Field(min_length=1)
    offset: int = Field(default=0, ge=0)
    length: int = Field(ge=0)
    type: Literal["sampled_tokens"] = "sampled_tokens"


ProvenanceSpan = Annotated[PromptProvenanceSpan | SampledProvenanceSpan, Field(discriminator="type")]
ProvenanceSpans = list[ProvenanceSpan]
