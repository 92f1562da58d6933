"""Documented request limits (spec LIM, ``spec/11-limits.md``).

A small request must not be able to take unbounded memory or time. ``Limits`` holds the bounds the
client layer enforces before a request is queued (so a refused request changes nothing) and that
the HTTP server adds to (request bytes, queued work per tenant). Every refusal is a
``LimitExceededError`` (a ``BadRequestError``) naming the field and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LimitExceededError

__all__ = ["Limits", "DEFAULT_LIMITS", "check_rank_for_width"]


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; the defaults are tinker-std's documented ones (LIM-1..LIM-4)."""

    #: LoRA rank, whatever the model (LIM-1); a backend also refuses ranks above its model's width.
    max_lora_rank: int = 512
    #: datums in one forward / forward_backward call (LIM-2).
    max_datums_per_call: int = 16384
    #: completions in one sample request (LIM-3).
    max_num_samples: int = 256
    #: num_samples x max_tokens of one sample request (LIM-3); with max_tokens None, the room left
    #: in the context counts.
    max_sample_tokens: int = 2**18

    def check_rank(self, rank: object) -> None:
        if isinstance(rank, int) and not isinstance(rank, bool) and rank > self.max_lora_rank:
            raise LimitExceededError("rank", f"LoRA rank {rank} exceeds the limit of {self.max_lora_rank}")

    def check_datums(self, count: int) -> None:
        if count > self.max_datums_per_call:
            raise LimitExceededError(
                "data", f"{count} datums in one call exceed the limit of {self.max_datums_per_call}; split the call"
            )

    def check_sample(self, num_samples: int, max_tokens: int) -> None:
        if num_samples > self.max_num_samples:
            raise LimitExceededError(
                "num_samples", f"{num_samples} samples in one request exceed the limit of {self.max_num_samples}"
            )
        if num_samples * max_tokens > self.max_sample_tokens:
            raise LimitExceededError(
                "sampling_params.max_tokens",
                f"num_samples x max_tokens = {num_samples} x {max_tokens} = {num_samples * max_tokens} tokens exceed "
                f"the limit of {self.max_sample_tokens} per request; send fewer samples or fewer tokens per request",
            )


DEFAULT_LIMITS = Limits()


def check_rank_for_width(rank: int, width: int, base_model: str) -> None:
    """``LimitExceededError`` when ``rank`` exceeds the model width: such an adapter has more
    parameters than the layer it adapts and no more expressive power (LIM-1)."""
    if rank > width:
        raise LimitExceededError("rank", f"LoRA rank {rank} exceeds the width {width} of {base_model}")
