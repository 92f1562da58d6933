"""The decode loop of the mock backend, and the spec's sampling semantics (SMP).

* Sequence ``j`` of a request draws from its own ``torch.Generator`` seeded with
  ``(seed * 1_000_003 + j) mod 2**63`` when ``sampling_params.seed`` is set (fresh randomness
  otherwise), and sequences are computed one at a time, so a sequence's output depends neither on
  ``num_samples`` nor on the other sequences.
* ``temperature == 0`` is greedy (``argmax``, lowest id on ties). Otherwise the distribution is
  ``softmax(logits / temperature)``, cut to the ``top_k`` most probable tokens (ties broken by
  lower id), renormalised, cut to the smallest prefix whose cumulative probability reaches
  ``top_p``, and sampled by inverse CDF with one uniform draw per token.
* ``logprobs[i]`` is the raw model ``log_softmax`` (temperature 1, no filtering) of the sampled
  token given ``prompt + tokens[:i]``: the number ``forward`` returns for that token.
* Stops: ``None`` -> EOS; ``str | list[str]`` -> the decoded completion contains one of them;
  ``list[int]`` -> the sampled token is one of them; ``[]`` -> none. Explicit stops replace EOS.
  The token that triggers a stop is kept and ``stop_reason`` is ``"stop"``; otherwise generation
  ends after ``max_tokens`` (default: the rest of the context window) with ``"length"``.
* The prompt is run once; each sequence then decodes one token at a time on its own copy of the
  prompt's key/value cache.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tinker_std.backend import SampleRequest, SamplerSpec, Tokenizer
from tinker_std.errors import BadRequestError, ContextLengthError
from tinker_std.types import (
    TOPK_PAD_LOGPROB,
    TOPK_PAD_TOKEN,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    StopReason,
)

from .model import KVCache

__all__ = ["StopRule", "sequence_generator", "choose_token", "generate", "prompt_scores", "sample"]

#: ``model(tokens, cache)``: logits (T, V) of ``tokens`` continuing the sequence held by ``cache``
#: (which it extends); see ``model.forward``.
ModelFn = Callable[[list[int], KVCache], torch.Tensor]

SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class StopRule:
    """When a completion is finished: a token in ``tokens`` was sampled, or its text contains one
    of ``strings``."""

    tokens: frozenset[int]
    strings: tuple[str, ...]

    @classmethod
    def from_stop(cls, stop: str | list[str] | list[int] | None, eos_token_id: int | None) -> StopRule:
        if stop is None:
            return cls(frozenset() if eos_token_id is None else frozenset({eos_token_id}), ())
        if isinstance(stop, str):
            return cls(frozenset(), (stop,))
        return cls(
            frozenset(s for s in stop if isinstance(s, int)), tuple(s for s in stop if isinstance(s, str))
        )

    def reached(self, completion: list[int], tokenizer: Tokenizer) -> bool:
        if completion and completion[-1] in self.tokens:
            return True
        if not self.strings:
            return False
        text = tokenizer.decode(completion)
        return any(s in text for s in self.strings)


def sequence_generator(seed: int | None, index: int) -> torch.Generator:
    """The random stream of sequence ``index`` of a request."""
    value = (seed * SEED_STRIDE + index) % 2**63 if seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(value)


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token given last-position ``logits`` (V,), per the module docstring."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_probs, ids = torch.sort(probs, descending=True, stable=True)
    if params.top_k != -1:
        sorted_probs = sorted_probs[: params.top_k]
    sorted_probs = sorted_probs / sorted_probs.sum()
    if params.top_p < 1.0:
        below = int((torch.cumsum(sorted_probs, 0) < params.top_p).sum())
        sorted_probs = sorted_probs[: min(below + 1, sorted_probs.numel())]
    cdf = torch.cumsum(sorted_probs, 0)
    u = torch.rand((), generator=generator, dtype=cdf.dtype) * cdf[-1]
    index = min(int(torch.searchsorted(cdf, u, right=True)), cdf.numel() - 1)
    return int(ids[index])


def generate(
    model: ModelFn,
    logits: torch.Tensor,
    cache: KVCache,
    params: SamplingParams,
    max_tokens: int,
    stop: StopRule,
    tokenizer: Tokenizer,
    generator: torch.Generator,
) -> SampledSequence:
    """One completion, given the prompt's last-position ``logits`` and its ``cache`` (extended here)."""
    tokens: list[int] = []
    logprobs: list[float] = []
    reason: StopReason = "length"
    while len(tokens) < max_tokens:
        token = choose_token(logits, params, generator)
        tokens.append(token)
        logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
        if stop.reached(tokens, tokenizer):
            reason = "stop"
            break
        if len(tokens) < max_tokens:
            logits = model([token], cache)[-1]
    return SampledSequence(
        stop_reason=reason,
        tokens=tokens,
        logprobs=logprobs,
        sequence_id=uuid.uuid4().hex,
    )


def prompt_scores(
    logits: torch.Tensor, prompt: Sequence[int], include: bool, topk: int
) -> tuple[list[float | None] | None, list[list[tuple[int, float]] | None] | None]:
    """``prompt_logprobs`` (when ``include``) and ``topk_prompt_logprobs`` (when ``topk > 0``),
    from the prompt's logits (T, V).

    Entry 0 is ``None``; entry ``i`` scores position ``i`` given ``prompt[:i]``. Top-k rows are
    sorted by logprob descending, ties by token id ascending; when ``topk > V`` they are padded to
    ``topk`` pairs with ``(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)`` (SMP-17).
    """
    logp = torch.log_softmax(logits[:-1], dim=-1)  # row i predicts prompt[i + 1]
    lps: list[float | None] | None = None
    if include:
        targets = torch.as_tensor(list(prompt[1:]), dtype=torch.long)
        lps = [None, *logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()]
    tops: list[list[tuple[int, float]] | None] | None = None
    if topk > 0:
        values, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
        k = min(topk, logp.shape[-1])
        tops = [None]
        padding = [(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)] * (topk - k)
        for row_ids, row_values in zip(ids[:, :k].tolist(), values[:, :k].tolist(), strict=True):
            tops.append(list(zip(row_ids, row_values, strict=True)) + padding)
    return lps, tops


def sample(model: ModelFn, request: SampleRequest, spec: SamplerSpec, tokenizer: Tokenizer) -> SampleResponse:
    """Answer one sampling request with ``model``, the sampler ``spec`` giving its sizes.

    ``BadRequestError`` (field ``prompt``) for an empty prompt or a token id outside the vocabulary;
    ``ContextLengthError`` when ``prompt + max_tokens`` does not fit (SMP-2)."""
    prompt = list(request.prompt)
    params = request.sampling_params
    vocab_size, max_context_length = spec.vocab_size, spec.max_context_length
    if not prompt or min(prompt) < 0 or max(prompt) >= vocab_size:
        raise BadRequestError("prompt", f"must be a non-empty list of token ids in [0, {vocab_size})")
    room = max_context_length - len(prompt)
    if params.max_tokens is None and room <= 0:
        raise ContextLengthError("prompt", f"{len(prompt)} tokens leave no room in the context of {max_context_length}")
    max_tokens = room if params.max_tokens is None else params.max_tokens
    if max_tokens > room:
        raise ContextLengthError(
            "sampling_params.max_tokens",
            f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) exceeds the context of {max_context_length}",
        )
    stop = StopRule.from_stop(params.stop, tokenizer.eos_token_id)
    prompt_cache = KVCache()
    prompt_logits = model(prompt, prompt_cache)  # shared by every sequence: caches are copy-on-extend
    sequences = [
        generate(
            model, prompt_logits[-1], prompt_cache.copy(), params, max_tokens, stop, tokenizer,
            sequence_generator(params.seed, j),
        )
        for j in range(request.num_samples)
    ]
    lps, tops = prompt_scores(
        prompt_logits, prompt, request.include_prompt_logprobs, request.topk_prompt_logprobs
    )
    return SampleResponse(sequences=sequences, prompt_logprobs=lps, topk_prompt_logprobs=tops, type="sample")
