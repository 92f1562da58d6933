"""Sampling for the independent provider, from spec/07-sampling.md.

``temperature = 0``: argmax, lowest id on ties (SMP-10). ``T > 0``: ``softmax(logits / T)`` in
float64, then top-k and top-p as SMP-11 orders them. With a seed, the token is drawn by draw rule 2
(SMP-20): inverse CDF in token-id order over the kept probabilities, ``u`` from
``torch.rand((), generator, dtype=float64)`` of ``sequence_generator(seed, j)`` (the generator the
spec names). Without a seed nothing is promised beyond the distribution, so the draw is
``torch.multinomial`` on the global generator. Reported logprobs are raw temperature-1 logprobs
(SMP-3); stops follow SMP-4..SMP-9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tinker_std.sampling_rules import sequence_generator
from tinker_std.types import SampledSequence, SamplingParams

from .model import EOS, CharTokenizer

__all__ = ["generate", "prompt_logprob_rows"]

LogitsFn = Callable[[list[int]], torch.Tensor]
TOPK_PAD = (0, -99999.0)


def _filtered(probs: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``probs`` with the entries removed by top-k then top-p set to zero (not renormalised)."""
    if params.top_k == -1 and params.top_p >= 1.0:
        return probs
    order = torch.sort(probs, descending=True, stable=True)
    keep = probs.numel() if params.top_k == -1 else min(params.top_k, probs.numel())
    if params.top_p < 1.0:
        top = order.values[:keep] / order.values[:keep].sum()
        cumulative = torch.cumsum(top, 0)
        reaching = torch.nonzero(cumulative >= params.top_p)
        keep = min(keep, int(reaching[0]) + 1 if reaching.numel() else keep)
    out = torch.zeros_like(probs)
    kept = order.indices[:keep]
    out[kept] = probs[kept]
    return out


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = _filtered(torch.softmax(logits.double() / params.temperature, dim=-1), params)
    if generator is None:
        return int(torch.multinomial(probs, 1))
    cdf = torch.cumsum(probs, 0)
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    above = torch.nonzero(cdf > u)
    if above.numel():
        return int(above[0])
    return int(torch.nonzero(probs > 0)[-1])


def _stopped(tokens: list[int], stop: str | list[str] | list[int] | None, tokenizer: CharTokenizer) -> bool:
    if stop is None:
        return tokens[-1] == EOS
    items: list[str | int] = [stop] if isinstance(stop, str) else list(stop)
    if tokens[-1] in [s for s in items if isinstance(s, int)]:
        return True
    strings = [s for s in items if isinstance(s, str)]
    if not strings:
        return False
    text = tokenizer.decode(tokens)
    return any(s in text for s in strings)


def generate(
    logits_fn: LogitsFn, prompt: list[int], params: SamplingParams, max_tokens: int, index: int
) -> SampledSequence:
    """Completion ``index`` of a request; recomputes the whole sequence per token (no KV cache)."""
    generator = sequence_generator(params.seed, index) if params.seed is not None else None
    tokenizer = CharTokenizer()
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < max_tokens:
        logits = logits_fn(prompt + tokens)[-1]
        token = _draw(logits, params, generator)
        tokens.append(token)
        logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
        if _stopped(tokens, params.stop, tokenizer):
            return SampledSequence(stop_reason="stop", tokens=tokens, logprobs=logprobs)
    return SampledSequence(stop_reason="length", tokens=tokens, logprobs=logprobs)


def prompt_logprob_rows(
    logits: torch.Tensor, prompt: list[int], include: bool, topk: int
) -> tuple[list[float | None] | None, list[list[tuple[int, float]] | None] | None]:
    """SMP-13 prompt logprobs and SMP-17 top-k rows from the prompt's logits (P, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)[:-1]
    lps: list[float | None] | None = None
    if include:
        lps = [None] + [float(logp[i, t]) for i, t in enumerate(prompt[1:])]
    tops: list[list[tuple[int, float]] | None] | None = None
    if topk > 0:
        tops = [None]
        k = min(topk, logp.shape[-1])
        for row in logp:
            values, ids = torch.sort(row, descending=True, stable=True)
            pairs = [(int(i), float(v)) for i, v in zip(ids[:k], values[:k], strict=True)]
            tops.append(pairs + [TOPK_PAD] * (topk - k))
    return lps, tops
