"""Statistical checks of unseeded sampling (spec 07: SMP-10, SMP-11), with a stated false-failure rate.

The reference is the backend's own distribution: the raw next-token logprobs ``lp`` it returns
(``compute_logprobs`` token by token, or one ``topk_prompt_logprobs`` row of width ``V``). Each
returned logprob is within the class's per-element tolerance ``a_i = atol + rtol·|lp_i|`` of the
one the backend samples from (SMP-3, SMP-16), so the probability of a set ``S`` of kept tokens
under ``softmax(lp / T)`` restricted to the kept set ``K`` lies in the exact interval::

    lo(S) = Σ_S e^{(lp_i - a_i)/T} / (Σ_S e^{(lp_i - a_i)/T} + Σ_{K \\ S} e^{(lp_j + a_j)/T})
    hi(S) = Σ_S e^{(lp_i + a_i)/T} / (Σ_S e^{(lp_i + a_i)/T} + Σ_{K \\ S} e^{(lp_j - a_j)/T})

(``p(S)`` increases with every ``lp_i``, ``i ∈ S``, and decreases with the others). The kept set
is split into tokens kept under every distribution within tolerance, tokens removed under every
one (a draw of one is a certain failure) and the uncertain rest (one category, judged only from
above, whose mass widens the others' bounds); ``choose_scenarios`` picks ``top_k`` and ``top_p``
away from ties and cumulative boundaries where it can, so that the uncertain set is empty.

One ``sample`` call of ``n`` sequences gives the counts ``c_S`` of each category ``S`` (up to
``MAX_SINGLES`` most probable kept tokens one by one, the rest of ``K`` together). Under a correct
backend ``c_S ~ Binomial(n, p)`` with ``p ∈ [lo, hi]``, and the Chernoff bound gives, for
``c/n > hi``, ``P(c_S ≥ c) ≤ exp(-n·KL(c/n ‖ hi))`` (and symmetrically below ``lo``). A category
fails only when that bound is ``<= alpha_call / (2·#categories)``; by the union bound one call fails
a correct backend with probability at most ``alpha_call``, and the suite makes at most
``MAX_CALLS`` such calls per run, each with ``alpha_call = FALSE_FAILURE_PER_RUN / MAX_CALLS``: at most
``1e-6`` per run in total, whatever the backend's distribution.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

import tinker_std as ts

from .tolerances import ToleranceClass, resolve

__all__ = [
    "FALSE_FAILURE_PER_RUN",
    "MAX_CALLS",
    "ALPHA_CALL",
    "MAX_SINGLES",
    "DrawCheck",
    "chernoff_tail",
    "check_draws",
    "choose_scenarios",
    "next_token_logprobs",
]

#: Probability that the suite's statistical sampling checks fail a correct backend, per run (at most).
FALSE_FAILURE_PER_RUN = 1e-6
#: Statistical ``sample`` calls the suite makes per run, at most (each spends ``ALPHA_CALL``).
MAX_CALLS = 20
ALPHA_CALL = FALSE_FAILURE_PER_RUN / MAX_CALLS
#: Kept tokens judged one by one (the most probable); the rest of the kept set is one category.
MAX_SINGLES = 8

Array = npt.NDArray[np.float64]


class _SharedParams(TypedDict):
    """The ``SamplingParams`` fields every statistical scenario shares (one token, no stop, no seed)."""

    max_tokens: int
    stop: list[int]
    seed: None


def next_token_logprobs(
    sampler: ts.SamplingClient, prefix: list[int], vocab_size: int, capabilities: ts.Capabilities, statement: str
) -> Array:
    """The raw logprobs ``log p(t | prefix)`` of every token ``t`` (V,), as the sampler returns them:
    one ``topk_prompt_logprobs`` row of width ``V`` when the backend declares it, else
    ``compute_logprobs(prefix + [t])`` for every ``t`` (pipelined; up to 4096 tokens). Fails
    loudly (naming ``statement``) when neither is possible."""
    if capabilities.supports("topk_prompt_logprobs"):
        prompt = ts.ModelInput.from_ints([*prefix, 0])
        rows = sampler.sample(prompt, 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=vocab_size)
        row = (rows.result().topk_prompt_logprobs or [])[len(prefix)]
        assert row is not None and len(row) == vocab_size, f"[SMP-17] a top-V row has {row and len(row)} entries"
        out = np.full(vocab_size, -np.inf)
        for token, value in row:
            out[int(token)] = float(value)
        return out
    if vocab_size > 4096:
        raise AssertionError(
            f"[{statement}] cannot read the next-token distribution: vocabulary of {vocab_size} tokens is too large "
            "to score token by token and the backend does not declare topk_prompt_logprobs"
        )
    futures = [sampler.compute_logprobs(ts.ModelInput.from_ints([*prefix, t])) for t in range(vocab_size)]
    values = [f.result()[-1] for f in futures]
    assert all(v is not None for v in values), f"[SMP-16] compute_logprobs returned None past entry 0 ({statement})"
    return np.array(values, dtype=np.float64)


def chernoff_tail(n: int, count: int, p: float) -> float:
    """Upper bound on ``P(Bin(n, p) >= count)`` (when ``count/n > p``) or ``P(Bin(n, p) <= count)``
    (when ``count/n < p``): ``exp(-n·KL(count/n ‖ p))``; 1 when ``count/n`` is on ``p``'s side."""
    q = count / n
    if q == p or (q < p and count >= n) or (q > p and count <= 0):
        return 1.0
    if (q > p and p <= 0.0) or (q < p and p >= 1.0):
        return 0.0

    def term(x: float, y: float) -> float:
        return 0.0 if x == 0 else x * math.log(x / y)

    kl = term(q, p) + term(1 - q, 1 - p)
    return math.exp(-n * kl)


@dataclass(frozen=True)
class DrawCheck:
    """One statistical scenario: the first token of ``n`` unseeded sequences drawn with ``params``
    from the distribution whose raw logprobs are ``logprobs``; ``statement`` is what it checks."""

    params: ts.SamplingParams
    statement: str
    description: str


def _allowance(logprobs: Array, cls: ToleranceClass) -> Array:
    return np.where(np.isfinite(logprobs), cls.token_atol + cls.token_rtol * np.abs(logprobs), 0.0)


def _set_bounds(lp: Array, a: Array, members: Sequence[int], others: Sequence[int], t: float) -> tuple[float, float]:
    """``[lo, hi]`` of ``p(members)`` against ``members  +  others`` at temperature ``t`` (module docstring)."""
    shift = float(np.max(lp[list(members) + list(others)]))

    def mass(ids: Sequence[int], sign: float) -> float:
        ids = list(ids)
        return float(np.sum(np.exp((lp[ids] + sign * a[ids] - shift) / t))) if ids else 0.0

    lo_in, hi_in, lo_out, hi_out = mass(members, -1), mass(members, 1), mass(others, -1), mass(others, 1)
    return lo_in / (lo_in + hi_out), hi_in / (hi_in + lo_out)


def _membership(lp: Array, a: Array, params: ts.SamplingParams) -> tuple[list[int], list[int]]:
    """``(sure, unsure)``: the tokens SMP-11's filters keep under every distribution within
    tolerance of ``lp``, and those some such distribution keeps and another removes (the rest are
    removed under all of them). One filter at a time (``top_k`` or ``top_p``)."""
    if params.top_k != -1 and params.top_p < 1.0:
        raise ValueError("the statistical scenarios use one filter at a time")
    t = params.temperature
    ids = np.flatnonzero(np.isfinite(lp))
    if params.top_k == -1 and params.top_p >= 1.0:
        return [int(i) for i in ids], []
    low, high = lp[ids] - a[ids], lp[ids] + a[ids]
    by_high, by_low = np.sort(high)[::-1], np.sort(low)[::-1]
    # j != i that could rank above i (high_j >= low_i; i itself always counts once), surely above (low_j > high_i)
    could = np.searchsorted(-by_high, -low, side="right") - 1
    surely = np.searchsorted(-by_low, -high, side="left")
    if params.top_k != -1:
        kept, removed = could < params.top_k, surely >= params.top_k
    else:
        shift = float(np.max(high))
        e_high, e_low = np.exp((high - shift) / t), np.exp((low - shift) / t)
        order_h, order_l = np.argsort(-high, kind="stable"), np.argsort(-low, kind="stable")
        cum_hh = np.concatenate([[0.0], np.cumsum(e_high[order_h])])
        cum_hl = np.concatenate([[0.0], np.cumsum(e_low[order_h])])
        cum_ll = np.concatenate([[0.0], np.cumsum(e_low[order_l])])
        cum_lh = np.concatenate([[0.0], np.cumsum(e_high[order_l])])
        m = could + 1  # the prefix in high-order holding i and the tokens that could rank above it
        above_hi = cum_hh[m] - e_high
        rest_lo = cum_hl[-1] - (cum_hl[m] - e_low)
        kept = (could == 0) | (above_hi / np.maximum(above_hi + rest_lo, 1e-300) < params.top_p)
        sure_lo = cum_ll[surely]
        rest_hi = cum_lh[-1] - cum_lh[surely]
        removed = (surely > 0) & (sure_lo / np.maximum(sure_lo + rest_hi, 1e-300) >= params.top_p)
    sure = [int(i) for i in ids[kept]]
    unsure = [int(i) for i in ids[~kept & ~removed]]
    return sure, unsure


def check_draws(
    tokens: Sequence[int],
    logprobs: Array,
    check: DrawCheck,
    tolerance: str | ToleranceClass | None = None,
    alpha: float = ALPHA_CALL,
) -> None:
    """Assert that the first tokens ``tokens`` of ``len(tokens)`` unseeded sequences are draws from
    ``check.params`` applied to ``logprobs`` (module docstring); the message names the statement
    and, when the counts fit temperature 1 instead, says that the temperature looks ignored."""
    cls = resolve(tolerance)
    lp = np.asarray(logprobs, np.float64)
    a = _allowance(lp, cls)
    params = check.params
    sure, unsure = _membership(lp, a, params)
    allowed = set(sure) | set(unsure)
    n = len(tokens)
    outside = [t for t in tokens if t not in allowed]
    if outside:
        common = Counter(outside).most_common(3)
        raise AssertionError(
            f"[SMP-11] {check.description}: {len(outside)}/{n} draws are tokens the filters remove "
            f"(top_k={params.top_k}, top_p={params.top_p}, kept {len(sure)} tokens for sure: {sorted(sure)[:12]}); "
            f"most common {common}"
        )
    failure = _category_failure(tokens, lp, a, sure, unsure, params.temperature, alpha)
    if failure is None:
        return
    hint = ""
    if params.temperature != 1.0:
        sure_1, unsure_1 = _membership(lp, a, params.model_copy(update={"temperature": 1.0}))
        if _category_failure(tokens, lp, a, sure_1, unsure_1, 1.0, alpha) is None:
            hint = "; the counts fit temperature 1: the temperature looks ignored"
    raise AssertionError(f"[{check.statement}] {check.description}: {failure}{hint}")


def _category_failure(
    tokens: Sequence[int], lp: Array, a: Array, sure: list[int], unsure: list[int], t: float, alpha: float
) -> str | None:
    """The first category whose count is impossible (module docstring), or ``None``. Tokens of
    uncertain membership form one category judged only from above, and widen the others' bounds."""
    n = len(tokens)
    counts = Counter(tokens)
    ranked = sorted(sure, key=lambda i: (-lp[i], i))
    categories: list[tuple[str, list[int]]] = [(f"token {i}", [i]) for i in ranked[:MAX_SINGLES]]
    if ranked[MAX_SINGLES:]:
        categories.append((f"the other {len(ranked) - MAX_SINGLES} kept tokens", ranked[MAX_SINGLES:]))
    if unsure:
        categories.append((f"the {len(unsure)} tokens the filters may keep or remove within tolerance", unsure))
    per_side = alpha / (2 * len(categories))
    for label, members in categories:
        inside = set(members)
        others = [i for i in sure if i not in inside]
        if members is unsure:  # mass in [0, its largest share]
            lo, hi = 0.0, _set_bounds(lp, a, members, others, t)[1] if others else 1.0
        else:
            hi = _set_bounds(lp, a, members, others, t)[1] if others else 1.0
            lo = _set_bounds(lp, a, members, others + [i for i in unsure if i not in inside], t)[0]
            lo = lo if (others or unsure) else 1.0
        c = sum(counts[i] for i in members)
        if (c / n > hi and chernoff_tail(n, c, hi) <= per_side) or (c / n < lo and chernoff_tail(n, c, lo) <= per_side):
            return (
                f"{label} drawn {c}/{n} times ({c / n:.4f}); at temperature {t:g} its probability is in "
                f"[{lo:.4f}, {hi:.4f}] (Chernoff bound of the deviation <= {per_side:.1e})"
            )
    return None


def choose_scenarios(logprobs: Array, tolerance: str | ToleranceClass | None = None) -> list[DrawCheck]:
    """The statistical scenarios for one next-token distribution: temperature 0.5 with no filter
    (SMP-10); temperature 1.3 with a ``top_k`` and temperature 0.8 with a ``top_p`` (SMP-11), each
    at a cut that tolerance cannot move when the distribution has one (``k`` in 2..32, ``top_p``
    keeping 2..16 tokens), else at ``k = 3`` / the 3-token ``top_p`` with the uncertain tokens
    judged as such."""
    cls = resolve(tolerance)
    lp = np.asarray(logprobs, np.float64)
    a = _allowance(lp, cls)
    base: _SharedParams = {"max_tokens": 1, "stop": [], "seed": None}
    out = [DrawCheck(ts.SamplingParams(temperature=0.5, **base), "SMP-10", "temperature 0.5, no filter")]
    v = int(np.isfinite(lp).sum())

    def clean(params: ts.SamplingParams) -> bool:
        return not _membership(lp, a, params)[1]

    # among the cuts tolerance cannot move, the one whose boundary tokens are the most probable
    # (an off-by-one filter then shows soonest); the 3-token cut when there is none
    sorted_t = {t: np.sort(np.exp((lp[np.isfinite(lp)] - np.max(lp)) / t))[::-1] for t in (1.3, 0.8)}
    ks = [k for k in range(2, 33) if k < v]
    clean_k = [k for k in ks if clean(ts.SamplingParams(temperature=1.3, top_k=k, **base))]
    top_k = max(clean_k, key=lambda k: min(sorted_t[1.3][k - 1], sorted_t[1.3][k])) if clean_k else 3
    out.append(
        DrawCheck(ts.SamplingParams(temperature=1.3, top_k=top_k, **base), "SMP-11", f"temperature 1.3, top_k {top_k}")
    )
    cumulative = np.cumsum(sorted_t[0.8] / sorted_t[0.8].sum())
    cuts = {n: float((cumulative[n - 2] + cumulative[n - 1]) / 2) for n in range(2, 17) if n < v}
    clean_n = [n for n, p in cuts.items() if clean(ts.SamplingParams(temperature=0.8, top_p=p, **base))]
    top_p = cuts[max(clean_n, key=lambda n: sorted_t[0.8][n - 1]) if clean_n else 3]
    out.append(
        DrawCheck(
            ts.SamplingParams(temperature=0.8, top_p=top_p, **base), "SMP-11", f"temperature 0.8, top_p {top_p:.4f}"
        )
    )
    return out
