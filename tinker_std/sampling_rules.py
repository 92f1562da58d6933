"""Backend-independent sampling semantics (spec SMP), shared by every backend's decode loop.

A backend owns its model and its decode loop (KV cache, batching); what a sampled sequence *means*
lives here, so that two backends given the same logits make the same choices:

* ``sequence_generator(seed, j)``: sequence ``j`` of a request draws from its own
  ``torch.Generator`` seeded with ``(seed * SEED_STRIDE + j) mod 2**63`` when a seed is given
  (fresh randomness otherwise). Its output therefore depends neither on ``num_samples`` nor on what
  else is batched with it (SMP-12).
* ``choose_token(logits, params, generator)``: ``temperature == 0`` is greedy (``argmax``, lowest
  id on ties). Otherwise the distribution is ``softmax(logits / temperature)``, cut to the
  ``top_k`` most probable tokens (ties broken by lower id), renormalised, cut to the shortest
  prefix whose cumulative probability reaches ``top_p`` (at least one token), and sampled by
  inverse CDF with exactly one uniform draw per token (SMP-10, SMP-11). The CDF runs over the kept
  tokens in ascending token-id order (draw rule ``DRAW_RULE`` = 2, SMP-20): with no top-k/top-p
  filter no sort is needed at all, only one cumulative sum (rule 1, spec 0.1, walked the sorted
  order, which cost a full-vocabulary sort per token).
* ``StopRule``: ``None`` -> EOS; ``str | list[str]`` -> the decoded completion contains one of
  them; ``list[int]`` -> the sampled token is one of them; ``[]`` -> none. Explicit stops replace
  EOS, and the token that triggers a stop is kept (SMP-4..SMP-9).
* ``prompt_scores``: prompt logprobs and top-k prompt logprobs, rows sorted by logprob descending
  with ties by lower id, padded with ``(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)`` only when ``k > V``
  (SMP-13, SMP-17).
* ``token_budget``: the prompt checks and ``max_tokens`` resolution of SMP-1 and SMP-2.

Returned sequence logprobs are always the raw temperature-1 ``log_softmax`` of the model's logits
at the sampled token (SMP-3); the helpers here never report processed-distribution values.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .backend import Tokenizer
from .errors import BadRequestError, ContextLengthError
from .types import TOPK_PAD_LOGPROB, TOPK_PAD_TOKEN, SamplingParams, TensorData
from .types.sampling import PromptAltTokens

__all__ = [
    "ALT_STREAM",
    "DRAW_RULE",
    "SEED_STRIDE",
    "StopRule",
    "alt_draws",
    "choose_token",
    "choose_tokens",
    "draw_in_id_order",
    "filters_active",
    "kept_count",
    "prompt_scores",
    "sequence_generator",
    "target_scores",
    "target_tensor",
    "token_budget",
]

#: Version of the seeded-draw rule (SMP-20): 2 = inverse CDF over the kept tokens in token-id order.
DRAW_RULE = 2

#: Multiplier separating the generator seeds of the sequences of one request.
SEED_STRIDE = 1_000_003

PromptLogprobs = list[float | None]
TopkPromptLogprobs = list[list[tuple[int, float]] | None]


@dataclass(frozen=True)
class StopRule:
    """When a completion is finished: its last token is in ``tokens``, or its decoded text contains
    one of ``strings``."""

    tokens: frozenset[int]
    strings: tuple[str, ...]

    @classmethod
    def from_stop(cls, stop: str | list[str] | list[int] | None, eos_token_id: int | None) -> StopRule:
        """The rule for ``SamplingParams.stop``; ``None`` means EOS (no stop when the tokenizer has none)."""
        if stop is None:
            return cls(frozenset() if eos_token_id is None else frozenset({eos_token_id}), ())
        if isinstance(stop, str):
            return cls(frozenset(), (stop,))
        return cls(frozenset(s for s in stop if isinstance(s, int)), tuple(s for s in stop if isinstance(s, str)))

    def reached(self, completion: list[int], tokenizer: Tokenizer) -> bool:
        """Whether ``completion`` (every token generated so far, prompt excluded) ends the sequence."""
        if completion and completion[-1] in self.tokens:
            return True
        if not self.strings:
            return False
        text = tokenizer.decode(completion)
        return any(s in text for s in self.strings)


def sequence_generator(seed: int | None, index: int) -> torch.Generator:
    """The CPU random stream of sequence ``index`` of a request (see the module docstring)."""
    value = (seed * SEED_STRIDE + index) % 2**63 if seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(value)


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token given last-position ``logits`` (V,), per the module docstring.

    ``logits`` may live on any device; the uniform draw comes from ``generator`` (a CPU generator)
    and the arithmetic runs in the dtype of ``logits``. Backends that want device-independent draws
    pass CPU ``float64`` logits.
    """
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if filters_active(params):
        sorted_probs, ids = torch.sort(probs, descending=True, stable=True)
        kept = torch.zeros_like(probs)
        keep = ids[: kept_count(sorted_probs, params)]
        kept[keep] = probs[keep]
        probs = kept
    return draw_in_id_order(probs, generator)


def choose_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """``[choose_token(logits[r], params[r], generators[r]) for r ...]``: the same tokens from the
    same single uniform draw per row, only faster for filtered rows of CPU ``float64`` logits (the
    torch backend's decode loop chooses every token through it).

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


def filters_active(params: SamplingParams) -> bool:
    """Whether top-k or top-p removes any token (then the kept set needs the sorted order)."""
    return params.top_k != -1 or params.top_p < 1.0


def kept_count(sorted_probs: torch.Tensor, params: SamplingParams) -> int:
    """How many of the probabilities ``sorted_probs`` (sorted descending, lower id first on ties)
    the filters of SMP-11 keep: the top ``top_k``, then, renormalised, the shortest prefix whose
    cumulative probability reaches ``top_p`` (at least one). Only the sorted values enter the
    arithmetic, so any sort that gives the same values gives the same count."""
    n = sorted_probs.numel() if params.top_k == -1 else min(params.top_k, sorted_probs.numel())
    if params.top_p < 1.0:
        top = sorted_probs[:n]
        top = top / top.sum()
        below = int((torch.cumsum(top, 0) < params.top_p).sum())
        n = min(below + 1, n)
    return n


def draw_in_id_order(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One draw by inverse CDF over ``probs`` (V,) in token-id order (draw rule 2, SMP-20): with
    ``cdf = cumsum(probs)`` and ``u`` the next uniform of ``generator`` (in ``probs``' dtype) times
    ``cdf[-1]``, the lowest id ``i`` with ``cdf[i] > u``. Tokens of probability 0 (filtered out, or
    underflowed) are never chosen: when rounding makes ``u`` reach ``cdf[-1]``, the highest id of
    positive probability is."""
    cdf = torch.cumsum(probs, 0)
    u = torch.rand((), generator=generator, dtype=cdf.dtype).to(cdf.device) * cdf[-1]
    index = int(torch.searchsorted(cdf, u, right=True))
    if index >= cdf.numel():
        positive = torch.nonzero(probs > 0)
        index = int(positive[-1]) if positive.numel() else cdf.numel() - 1
    return index


def prompt_scores(
    logits: torch.Tensor, prompt: Sequence[int], include: bool, topk: int
) -> tuple[PromptLogprobs | None, TopkPromptLogprobs | None]:
    """``prompt_logprobs`` (when ``include``) and ``topk_prompt_logprobs`` (when ``topk > 0``),
    from the prompt's logits (P, V), row ``i`` predicting ``prompt[i + 1]``.

    Entry 0 is ``None``; entry ``i`` scores position ``i`` given ``prompt[:i]``. Top-k rows are
    sorted by logprob descending, ties by token id ascending; when ``topk > V`` they are padded to
    ``topk`` pairs with ``(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)`` (SMP-17).
    """
    logp = torch.log_softmax(logits[:-1], dim=-1)
    lps: PromptLogprobs | None = None
    if include:
        targets = torch.as_tensor(list(prompt[1:]), dtype=torch.long, device=logp.device)
        lps = [None, *logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()]
    tops: TopkPromptLogprobs | None = None
    if topk > 0:
        k = min(topk, logp.shape[-1])
        values, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
        tops = [None]
        padding = [(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)] * (topk - k)
        for row_ids, row_values in zip(ids[:, :k].tolist(), values[:, :k].tolist(), strict=True):
            tops.append(list(zip(row_ids, row_values, strict=True)) + padding)
    return lps, tops


def target_scores(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> list[list[float]]:
    """Per prompt position ``i + 1``, the logprob of each id in ``targets[i]`` under the prompt's
    logits (P, V), row ``i`` predicting ``prompt[i + 1]``; a ``-1`` id gets 0.0 (SDK-7)."""
    logp = torch.log_softmax(logits[:-1], dim=-1)
    ids = torch.as_tensor([list(row) for row in targets], dtype=torch.long, device=logp.device)
    if ids.numel() == 0:
        return [[] for _ in targets]
    picked = logp.gather(-1, ids.clamp(min=0))
    return torch.where(ids < 0, torch.zeros_like(picked), picked).tolist()


def target_tensor(logits: torch.Tensor, targets: Sequence[Sequence[int]] | None) -> TensorData | None:
    """``SampleResponse.target_prompt_logprobs`` for the request's ``target_prompt_ids`` (SDK-7):
    float32, the request's ``[len(prompt) - 1, K]`` shape; None when none were requested."""
    if targets is None:
        return None
    rows = target_scores(logits, targets)
    width = len(targets[0]) if targets else 0
    return TensorData(data=[v for row in rows for v in row], dtype="float32", shape=[len(targets), width])


#: The index of a request's prompt-draw stream in ``sequence_generator``: past any sequence's.
ALT_STREAM = SEED_STRIDE - 1


def alt_draws(logits: torch.Tensor, k: int, params: SamplingParams) -> PromptAltTokens | None:
    """``SampleResponse.prompt_alt_tokens`` (SDK-8): from the prompt's logits (P, V), row ``i``
    predicting ``prompt[i + 1]``, ``k`` independent draws with replacement per row at
    ``params.temperature`` (0: the argmax ``k`` times; top-k/top-p do not apply), from the request's
    seeded stream ``ALT_STREAM``, with their raw logprobs. None when ``k`` is 0."""
    if k <= 0:
        return None
    raw = logits[:-1].to("cpu", torch.float64)
    logp = torch.log_softmax(raw, dim=-1)
    if params.temperature == 0:
        ids = raw.argmax(dim=-1, keepdim=True).expand(-1, k)
    else:
        probs = torch.softmax(raw / params.temperature, dim=-1)
        ids = torch.multinomial(probs, k, replacement=True, generator=sequence_generator(params.seed, ALT_STREAM))
    rows, shape = ids.shape[0], [ids.shape[0], k]
    tokens = TensorData(data=ids.reshape(-1).tolist(), dtype="int64", shape=shape)
    values = logp.gather(-1, ids).reshape(-1).tolist() if rows else []
    return PromptAltTokens(tokens=tokens, logprobs=TensorData(data=values, dtype="float32", shape=shape))


def top_logprobs(logp: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per row of ``logp`` (R, V) raw logprobs: the ``k`` most likely ``(token_id, logprob)`` pairs,
    logprob descending, ties by token id ascending, padded with ``(TOPK_PAD_TOKEN,
    TOPK_PAD_LOGPROB)`` when ``k > V`` (the rule of SMP-17, for sampled positions: SDK-6)."""
    kept = min(k, logp.shape[-1])
    values, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
    padding = [(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)] * (k - kept)
    return [
        list(zip(row_ids, row_values, strict=True)) + padding
        for row_ids, row_values in zip(ids[:, :kept].tolist(), values[:, :kept].tolist(), strict=True)
    ]


def token_budget(prompt: Sequence[int], params: SamplingParams, vocab_size: int, max_context_length: int) -> int:
    """The number of tokens a request may generate (``max_tokens``, default the rest of the context).

    ``BadRequestError`` (field ``prompt``) for an empty prompt or a token id outside ``[0, V)``;
    ``ContextLengthError`` when ``prompt + max_tokens`` does not fit the context (SMP-1, SMP-2).
    """
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
    return max_tokens
