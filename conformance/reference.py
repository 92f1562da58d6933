"""Reference computations the suite checks backends against, written from the spec text.

They deliberately do not reuse ``tinker_std.losses`` or ``tinker_std.training_math`` (which a backend
may use), so a slip there is caught too. Everything is float64 torch.

* ``reference_loss``: the six loss formulas of 03-losses.md (LOSS-2..LOSS-7, LOSS-9 overrides).
* ``loss_with_slack``: the reference value plus a bound on how much the float32 rounding of the
  returned logprobs can move it (used as ``slack`` in ``assert_close``).
* ``adamw_reference``: one optimizer step per 04-optimizer.md, by ``torch.optim.AdamW`` after
  global-norm clipping with ``+1e-6`` (OPT-1..OPT-4, OPT-7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tinker_std import AdamParams, Datum

__all__ = [
    "DEFAULT_CONFIGS",
    "CLIP_EPS",
    "FLOAT32_ROUNDING",
    "reference_loss",
    "loss_with_slack",
    "AdamwResult",
    "adamw_reference",
]

#: Config defaults of LOSS-4..LOSS-7 (the table of 03-losses.md).
DEFAULT_CONFIGS: Mapping[str, Mapping[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
    "gspo": {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0004},
}
#: Added to the global norm in the clipping coefficient (OPT-4).
CLIP_EPS = 1e-6
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
        selected = torch.ones_like(lp, dtype=torch.bool) if mask is None else mask != 0
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


@dataclass(frozen=True)
class AdamwResult:
    weights: dict[str, Array]
    exp_avg: dict[str, Array]
    exp_avg_sq: dict[str, Array]
    step: int
    grad_norm: float


def adamw_reference(
    weights: Mapping[str, Any],
    grads: Mapping[str, Any],
    exp_avg: Mapping[str, Any],
    exp_avg_sq: Mapping[str, Any],
    step: int,
    params: AdamParams,
) -> AdamwResult:
    """One step of OPT-1..OPT-4 from an introspected state: global-norm clip with ``+1e-6`` first
    (when ``grad_clip_norm > 0``), then ``torch.optim.AdamW`` with the given hyperparameters."""
    names = list(weights)
    tensors = {n: torch.tensor(np.asarray(weights[n], np.float64), dtype=torch.float64) for n in names}
    g = {n: torch.tensor(np.asarray(grads[n], np.float64), dtype=torch.float64) for n in names}
    norm = torch.sqrt(sum((x.pow(2).sum() for x in g.values()), torch.zeros((), dtype=torch.float64)))
    if params.grad_clip_norm > 0:
        coef = min(1.0, params.grad_clip_norm / (float(norm) + CLIP_EPS))
        g = {n: x * coef for n, x in g.items()}
    leaves = [torch.nn.Parameter(tensors[n].clone()) for n in names]
    optimizer = torch.optim.AdamW(
        leaves,
        lr=params.learning_rate,
        betas=(params.beta1, params.beta2),
        eps=params.eps,
        weight_decay=params.weight_decay,
        amsgrad=False,
        maximize=False,
        foreach=False,
    )
    for n, p in zip(names, leaves, strict=True):
        p.grad = g[n].clone()
        if step > 0:
            optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.tensor(np.asarray(exp_avg[n], np.float64), dtype=torch.float64),
                "exp_avg_sq": torch.tensor(np.asarray(exp_avg_sq[n], np.float64), dtype=torch.float64),
            }
    optimizer.step()
    state = [optimizer.state[p] for p in leaves]
    return AdamwResult(
        weights={n: p.detach().numpy().copy() for n, p in zip(names, leaves, strict=True)},
        exp_avg={n: s["exp_avg"].numpy().copy() for n, s in zip(names, state, strict=True)},
        exp_avg_sq={n: s["exp_avg_sq"].numpy().copy() for n, s in zip(names, state, strict=True)},
        step=step + 1,
        grad_norm=float(norm),
    )
