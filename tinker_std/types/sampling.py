"""Sampling types: ``SamplingParams``, ``SampledSequence``, ``SampleResponse``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ._base import RequestModel, ResponseModel
from .tensor_data import TensorData

__all__ = ["SamplingParams", "SampledSequence", "SampleResponse", "StopReason", "TOPK_PAD_TOKEN", "TOPK_PAD_LOGPROB"]

StopReason = Literal["stop", "length"]

#: Padding of top-k prompt logprob rows with fewer than k entries (as in tinker).
TOPK_PAD_TOKEN = 0
TOPK_PAD_LOGPROB = -99999.0


class SamplingParams(RequestModel):
    """How to sample (spec SMP-1..SMP-12).

    ``stop``: ``None`` stops at EOS; a string or list of strings stops when the decoded completion
    contains one of them; a list of ints stops at any of those token ids (EOS then only if listed);
    ``[]`` disables every stop including EOS. ``temperature == 0`` is greedy; ``top_k == -1`` and
    ``top_p == 1`` disable those filters.
    """

    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    top_k: int = -1
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("top_k must be -1 (no limit) or >= 1")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | list[int] | None) -> str | list[str] | list[int] | None:
        if isinstance(value, str) and value == "":
            raise ValueError("a stop string must not be empty")
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str) and item == "":
                    raise ValueError(f"stop[{i}] must not be empty")
                if isinstance(item, int) and item < 0:
                    raise ValueError(f"stop[{i}] must be a non-negative token id")
        return value


class SampledSequence(ResponseModel):
    """One completion: its tokens (stop token included), raw logprobs, and why it ended."""

    stop_reason: StopReason
    tokens: list[int]
    logprobs: list[float] | None = None
    sequence_id: str = ""
    #: with ``topk_sample_logprobs = k``: per sampled position, the k most likely
    #: ``(token_id, logprob)`` pairs of the raw distribution it was drawn from (SDK-6)
    topk_logprobs: list[list[tuple[int, float]] | None] | None = None


class PromptAltTokens(ResponseModel):
    """``prompt_alt_tokens_k = k`` draws (SDK-8): both tensors ``[len(prompt) - 1, k]``; row ``i`` holds
    ``k`` independent draws at the request's temperature from the distribution over prompt token
    ``i + 1``, and ``logprobs[i][j]`` is the raw logprob of ``tokens[i][j]`` there."""

    tokens: TensorData
    logprobs: TensorData


class SampleResponse(ResponseModel):
    """``num_samples`` sequences plus prompt logprobs when asked for.

    ``prompt_logprobs[0]`` is ``None``. ``topk_prompt_logprobs[i]`` lists up to k
    ``(token_id, logprob)`` pairs sorted by logprob, descending; entry 0 is ``None``.
    """

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    #: with ``target_prompt_logprobs``: float32 ``[len(prompt) - 1, K]``, cell ``[i, j]`` the logprob
    #: of the requested id at prompt position ``i + 1``, 0.0 where the request had ``-1`` (SDK-7)
    target_prompt_logprobs: TensorData | None = None
    #: with ``prompt_alt_tokens_k = k > 0``: the draws at every prompt position after the first (SDK-8)
    prompt_alt_tokens: PromptAltTokens | None = None
    type: Literal["sample"] | None = None
