"""Reference computations the suite checks backends against, written from the spec text.

They deliberately do not reuse ``tinker_std.losses`` or ``tinker_std.training_math`` (which a backend
may use), so a slip there is caught too. Everything is float64 torch.

* ``reference_loss``: the six loss formulas of 03-losses.md (LOSS-2..LOSS-7, LOSS-9 overrides).
* ``loss_with_slack``: the reference value plus a bound on how much the float32 rounding of the
  returned logprobs can move it (used as ``slack`` in ``assert_close``).
* ``adamw_reference``: re-exported from ``conformance.adamw`` (one optimizer step per
  04-optimizer.md, with its derived tolerance there).
* ``kept_tokens``, ``draw_rule_2``: the top-k/top-p kept set of SMP-11 and the seeded draw of
  SMP-20, written from the spec text (not imported from ``tinker_std.sampling_rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tinker_std import Datum, SamplingParams

from .adamw import CLIP_EPS, AdamwResult, adamw_reference

__all__ = [
    "DEFAULT_CONFIGS",
    "CLIP_EPS",
    "FLOAT32_ROUNDING",
    "reference_loss",
    "loss_with_slack",
    "AdamwResult",
    "adamw_reference",
    "kept_tokens",
    "draw_rule_2",
    "SEED_STRIDE",
    "sequence_uniforms",
]

#: Config defaults of LOSS-4..LOSS-7 (the table of 03-losses.md).
DEFAULT_CONFIGS: Mapping[str, Mapping[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
    "gspo": {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0004},
    "stable_reinforce": {"kl_coeff": 0.0, "ratio_cap": 2.0},
}
#: Relative rounding of a value to float32 (one unit in the last place, generous).
FLOAT32_ROUNDING = 2.0**-23

Array = npt.NDArray[np.float64]


def _t(datum: Datum, key: str) -> torch.Tensor | None:
    value = datum.loss_fn_inputs.get(key)
    return None if value is None else torch.as_tensor(value.to_numpy(), dtype=torch.float64)


def _bounds(datum: Datum, config: Mapping[str, float], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = _t(datum, "clip_low_threshold"), _t(datum, "clip_high_threshold")
    lo = lo if lo is not None else torch.full_like(like, config["clip_low_threshold"])
    hi = hi if hi is not None else torch.full_like(like, config["clip_high_threshold"])
    return lo, hi


def _clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lo), hi)


def _datum_loss(loss_fn: str, lp: torch.Tensor, datum: Datum, config: Mapping[str, float]) -> torch.Tensor:
    if loss_fn == "cross_entropy":
        w = _t(datum, "weights")
        return -(lp if w is None else w.reshape(lp.shape) * lp).sum()
    q, adv = _t(datum, "logprobs"), _t(datum, "advantages")
    assert q is not None and adv is not None, f"{loss_fn} needs logprobs and advantages"
    if loss_fn == "importance_sampling":
        return -(torch.exp(lp - q) * adv).sum()
    if loss_fn == "ppo":
        r = torch.exp(lp - q)
        lo, hi = _bounds(datum, config, lp)
        return -torch.minimum(r * adv, _clip(r, lo, hi) * adv).sum()
    if loss_fn == "cispo":
        r = torch.exp(lp - q).detach()
        lo, hi = _bounds(datum, config, lp)
        return -(_clip(r, lo, hi) * lp * adv).sum()
    if loss_fn == "dro":
        return -(lp * adv - 0.5 * config["beta"] * (lp - q) ** 2).sum()
    if loss_fn == "gspo":
        mask = _t(datum, "sequence_ratio_mask")
        selected = ((adv != 0) | (q != 0)) if mask is None else mask != 0  # LOSS-7: sampled positions
        count = int(selected.sum())
        log_s = ((lp.detach() - q)[selected]).sum() / count if count else lp.new_zeros(())
        s = torch.exp(log_s + lp - lp.detach())
        lo, hi = _bounds(datum, config, lp)
        return -torch.minimum(s * adv, _clip(s, lo, hi) * adv).sum()
    raise ValueError(f"no reference for loss {loss_fn!r}")


def reference_loss(
    loss_fn: str,
    logprobs: Sequence[Any],
    data: Sequence[Datum],
    config: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """The loss of ``data`` given per-datum logprobs (arrays or tensors), as a differentiable scalar
    when the logprobs are tensors requiring grad."""
    cfg = {**DEFAULT_CONFIGS[loss_fn], **{k: float(v) for k, v in (config or {}).items()}}
    total = torch.zeros((), dtype=torch.float64)
    for lp, datum in zip(logprobs, data, strict=True):
        lp_t = lp if isinstance(lp, torch.Tensor) else torch.as_tensor(np.asarray(lp), dtype=torch.float64)
        total = total + _datum_loss(loss_fn, lp_t, datum, cfg)
    return total


def loss_with_slack(
    loss_fn: str, logprobs: Sequence[Array], data: Sequence[Datum], config: Mapping[str, float] | None = None
) -> tuple[float, float]:
    """``(L, slack)``: the reference loss of the returned (float32) logprobs, and a first-order bound
    ``sum |dL/dlp| * |lp| * 2**-23`` on how far the backend's loss, computed from the unrounded
    logprobs, can lie from it (plus the same for ``L`` itself)."""
    leaves = [torch.as_tensor(np.asarray(lp), dtype=torch.float64).clone().requires_grad_(True) for lp in logprobs]
    loss = reference_loss(loss_fn, leaves, data, config)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    bound = 0.0
    for g, lp in zip(grads, leaves, strict=True):
        if g is not None:
            bound += float((g.abs() * lp.detach().abs()).sum())
    value = float(loss.detach())
    return value, 2.0 * FLOAT32_ROUNDING * (bound + abs(value))


def kept_tokens(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The token ids SMP-11 keeps from ``probs`` (the temperature-scaled distribution, (V,)):
    the ``top_k`` most probable (lower id first on ties; all when ``-1``), then the shortest
    prefix of those, sorted the same way, whose renormalised cumulative probability is
    ``>= top_p`` (at least one). Returned sorted by probability descending, ties by id."""
    v = probs.numel()
    order = sorted(range(v), key=lambda i: (-float(probs[i]), i))
    keep = order if top_k == -1 else order[: min(top_k, v)]
    if top_p < 1.0:
        kept = probs[keep].to(torch.float64)
        cumulative = torch.cumsum(kept / kept.sum(), 0)
        count = 1
        while count < len(keep) and float(cumulative[count - 1]) < top_p:
            count += 1
        keep = keep[:count]
    return torch.tensor(keep, dtype=torch.long)


def draw_rule_2(
    logprobs: torch.Tensor, params: SamplingParams, u: float, dtype: torch.dtype = torch.float64
) -> tuple[int, float]:
    """The token draw rule 2 (SMP-20) picks for the uniform ``u`` in [0, 1) from the raw
    next-token ``logprobs`` (V,), computed in ``dtype``; also the distance of ``u * cdf[-1]`` to
    the nearest CDF boundary (a draw that close to a boundary may go either way within tolerance)."""
    probs = torch.softmax(logprobs.to(dtype) / params.temperature, 0)
    if params.top_k != -1 or params.top_p < 1.0:
        keep = kept_tokens(probs.to(torch.float64), params.top_k, params.top_p)
        kept = torch.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept
    cdf = torch.cumsum(probs, 0)
    x = u * cdf[-1]
    index = int(torch.searchsorted(cdf, x.reshape(1), right=True)[0])
    if index >= cdf.numel():
        index = int(torch.nonzero(probs > 0)[-1])
    return index, float(torch.min(torch.abs(cdf.to(torch.float64) - float(x))))


#: SMP-20: sequence ``j`` of a request with seed ``s`` draws from
#: ``torch.Generator().manual_seed((s * SEED_STRIDE + j) mod 2**63)``.
SEED_STRIDE = 1_000_003


def sequence_uniforms(seed: int, j: int, count: int, dtype: torch.dtype = torch.float64) -> list[float]:
    """The first ``count`` uniforms of sequence ``j``'s generator (SMP-20), drawn one per token as
    ``torch.rand((), generator, dtype=dtype)``."""
    gen = torch.Generator().manual_seed((seed * SEED_STRIDE + j) % 2**63)
    return [float(torch.rand((), generator=gen, dtype=dtype)) for _ in range(count)]
