"""The AdamW reference of spec 04 (OPT-1..OPT-7) and its computation-derived tolerance (TOL-5).

* ``adamw_reference``: one step from an introspected state, by ``torch.optim.AdamW`` in float64
  after global-norm clipping with ``+1e-6`` (what OPT-3/OPT-4 say the step is).
* ``adamw_allowance``: per element, how far a correct implementation computing in the working
  precision of a tolerance class (unit roundoff ``u``) can lie from that float64 reference. The
  derivation is in spec/README.md ("Derived bounds"); in short, every operation of the step
  rounds with relative error ``u``, and the bound propagates those errors through the step with
  the condition numbers of each operation (cancellation in ``m``, ``1 - beta**t`` for betas near
  1, ``sqrt`` near zero, the clipping coefficient taken from a norm known to the class's sum
  tolerance), times a safety factor of 2, plus the class's per-element ``atol``.
* ``check_adamw_step``: compares a backend's state after a step with the reference under that
  allowance, naming the statement broken: when the step instead matches a known-wrong variant
  (clipping skipped, coupled or missing weight decay, bias correction with ``t - 1``, step counter
  not advanced), the message says so and names OPT-4, OPT-2, OPT-3 or OPT-7.

Nothing here uses ``tinker_std.training_math``: a slip there is caught too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tinker_std import AdamParams

from .tolerances import ToleranceClass, mismatch_summary, resolve

__all__ = [
    "CLIP_EPS",
    "SAFETY",
    "AdamState",
    "AdamwResult",
    "adamw_reference",
    "adamw_variant",
    "adamw_allowance",
    "check_adamw_step",
]

#: Added to the global norm in the clipping coefficient (OPT-4).
CLIP_EPS = 1e-6
#: Safety factor on the derived per-element bound (fused kernels, other evaluation orders).
SAFETY = 2.0
#: Smallest positive normal float32/bfloat16 (both have 8 exponent bits): absolute rounding floor.
_TINY = 2.0**-126

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AdamState:
    """One client's trainable state as float64 arrays by parameter name (from ``read_state``)."""

    weights: dict[str, Array]
    grads: dict[str, Array]
    exp_avg: dict[str, Array]
    exp_avg_sq: dict[str, Array]
    step: int

    @classmethod
    def of(cls, state: Any) -> AdamState:
        """From an ``AdapterState`` (or anything with the same five attributes)."""

        def arrays(values: Mapping[str, Any]) -> dict[str, Array]:
            return {k: np.asarray(v, np.float64) for k, v in values.items()}

        return cls(
            arrays(state.weights), arrays(state.grads), arrays(state.exp_avg), arrays(state.exp_avg_sq), int(state.step)
        )


@dataclass(frozen=True)
class AdamwResult:
    weights: dict[str, Array]
    exp_avg: dict[str, Array]
    exp_avg_sq: dict[str, Array]
    step: int
    grad_norm: float
    #: the clipping coefficient applied to the gradient (1.0 when not clipping)
    coef: float = 1.0
    clipped_grads: dict[str, Array] = field(default_factory=dict)


def _global_norm(grads: Mapping[str, Any]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values()))


def adamw_reference(
    weights: Mapping[str, Any],
    grads: Mapping[str, Any],
    exp_avg: Mapping[str, Any],
    exp_avg_sq: Mapping[str, Any],
    step: int,
    params: AdamParams,
) -> AdamwResult:
    """One step of OPT-1..OPT-4 from an introspected state: global-norm clip with ``+1e-6`` first
    (when ``grad_clip_norm > 0``), then ``torch.optim.AdamW`` in float64 with the given hyperparameters."""
    names = list(weights)
    norm = _global_norm({n: grads[n] for n in names})
    coef = min(1.0, params.grad_clip_norm / (norm + CLIP_EPS)) if params.grad_clip_norm > 0 else 1.0
    g = {n: torch.tensor(np.asarray(grads[n], np.float64) * coef, dtype=torch.float64) for n in names}
    leaves = [torch.nn.Parameter(torch.tensor(np.asarray(weights[n], np.float64), dtype=torch.float64)) for n in names]
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
        grad_norm=norm,
        coef=coef,
        clipped_grads={n: x.numpy().copy() for n, x in g.items()},
    )


def adamw_variant(state: AdamState, params: AdamParams, variant: str) -> AdamwResult:
    """A known-wrong AdamW step in float64 (for diagnosis and for the suite's own tests):
    ``no_clip`` (clipping ignored), ``coupled_decay`` (``λθ`` added to the gradient, L2 style),
    ``no_decay`` (weight decay ignored), ``bias_t_minus_1`` (bias corrections with ``t - 1``;
    ``1 - β**0 = 0`` is taken as 1), ``no_bias_correction``, ``stale_step`` (the step counter not
    advanced: corrections use the old ``t``, and ``t`` stays), ``per_tensor_clip`` (each tensor
    clipped by its own norm)."""
    norm = _global_norm(state.grads)
    t_new = state.step if variant == "stale_step" else state.step + 1
    b1, b2, lr, eps, wd = params.beta1, params.beta2, params.learning_rate, params.eps, params.weight_decay
    out_w, out_m, out_v, used = {}, {}, {}, {}
    for n, w in state.weights.items():
        g = state.grads[n].copy()
        c = params.grad_clip_norm
        if c > 0 and variant != "no_clip":
            own = float(np.sqrt(np.sum(g * g))) if variant == "per_tensor_clip" else norm
            g = g * min(1.0, c / (own + CLIP_EPS))
        if variant == "coupled_decay":
            g = g + wd * w
        used[n] = g
        m = b1 * state.exp_avg[n] + (1 - b1) * g
        v = b2 * state.exp_avg_sq[n] + (1 - b2) * g * g
        t = max(t_new - 1, 0) if variant == "bias_t_minus_1" else max(t_new, 1)
        bc1 = 1.0 if variant == "no_bias_correction" else (1 - b1**t) or 1.0
        bc2 = 1.0 if variant == "no_bias_correction" else (1 - b2**t) or 1.0
        decayed = w if variant in ("coupled_decay", "no_decay") else w * (1 - lr * wd)
        out_w[n] = decayed - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
        out_m[n], out_v[n] = m, v
    return AdamwResult(out_w, out_m, out_v, t_new, norm, clipped_grads=used)


def adamw_allowance(
    state: AdamState, params: AdamParams, want: AdamwResult, tolerance: str | ToleranceClass | None = None
) -> dict[str, dict[str, Array]]:
    """``{"weights" | "exp_avg" | "exp_avg_sq": {name: per-element allowance}}`` for comparing a
    step computed in the class's working precision with the float64 ``want`` (spec README,
    TOL-5). Excludes the class's ``atol``, which the caller adds."""
    cls = resolve(tolerance)
    u = cls.unit_roundoff
    b1, b2, lr, eps, wd = params.beta1, params.beta2, params.learning_rate, params.eps, params.weight_decay
    t = want.step
    clipping = params.grad_clip_norm > 0
    # relative error of the clipping coefficient: the norm is a sum (sum rtol), then a division
    delta_g = (cls.sum_rtol + 4 * u) if clipping else 0.0

    def rel_bias(beta: float) -> float:
        # bc = 1 - beta**t with beta rounded to the working precision: |d bc| <= t beta**t u (+ 2u bc)
        bc = 1 - beta**t
        return (t * beta**t * u) / bc + 2 * u if bc > 0 else 0.0

    bc1, bc2 = 1 - b1**t, 1 - b2**t
    rb1, rb2 = rel_bias(b1), rel_bias(b2)
    out: dict[str, dict[str, Array]] = {"weights": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for n, w in state.weights.items():
        m0, v0 = np.abs(state.exp_avg[n]), state.exp_avg_sq[n]
        g = np.abs(want.clipped_grads[n])
        m1, v1 = want.exp_avg[n], want.exp_avg_sq[n]
        # m' = b1 m + (1 - b1) g: cancellation is bounded by the sum of magnitudes; betas rounded
        e_m = (4 * u + u * b1) * (m0 + g) + (1 - b1) * g * delta_g + _TINY
        # v' = b2 v + (1 - b2) g^2: all terms non-negative
        e_v = (4 * u + u * b2) * (v0 + g * g) + 2 * (1 - b2) * g * g * delta_g + _TINY
        v_hat = v1 / bc2
        e_vhat = e_v / bc2 + v_hat * rb2
        s = np.sqrt(v_hat)
        with np.errstate(divide="ignore", invalid="ignore"):
            e_s = np.minimum(np.sqrt(e_vhat), np.where(s > 0, e_vhat / (2 * s), np.inf)) + 2 * u * s
        d = s + eps
        e_d = e_s + u * d
        update = lr * (m1 / bc1) / d
        e_update = lr * (e_m / bc1) / d + np.abs(update) * (rb1 + e_d / d + 3 * u)
        decayed = w * (1 - lr * wd)
        e_w = 3 * u * np.abs(w) + e_update + u * (np.abs(decayed) + np.abs(update) + np.abs(want.weights[n]))
        out["weights"][n] = SAFETY * e_w
        out["exp_avg"][n] = SAFETY * e_m
        out["exp_avg_sq"][n] = SAFETY * e_v
    return out


def _within(got: Mapping[str, Array], want: Mapping[str, Array], slack: Mapping[str, Array], atol: float) -> bool:
    return all(np.all(np.isfinite(got[n]) & (np.abs(got[n] - want[n]) <= atol + slack[n])) for n in want if n in got)


_DIAGNOSES = (
    ("no_clip", "OPT-4", "AdamW without the global-norm clipping"),
    ("per_tensor_clip", "OPT-4", "AdamW with each tensor clipped by its own norm instead of the global norm"),
    ("coupled_decay", "OPT-2", "AdamW with weight decay added to the gradient (coupled, L2) instead of decoupled"),
    ("no_decay", "OPT-2", "AdamW with the weight decay ignored"),
    ("bias_t_minus_1", "OPT-3", "AdamW with bias corrections computed with t - 1"),
    ("no_bias_correction", "OPT-3", "AdamW without bias correction"),
    ("stale_step", "OPT-7", "AdamW whose step counter t was not advanced"),
)


def check_adamw_step(
    before: AdamState,
    after: AdamState,
    params: AdamParams,
    metrics: Mapping[str, float] | None,
    tolerance: str | ToleranceClass | None = None,
) -> None:
    """Assert that ``after`` is one OPT-1..OPT-7 step from ``before`` within TOL-5's allowance
    (and, when ``metrics`` is given, OPT-6's metrics); messages name the statement broken."""
    cls = resolve(tolerance)
    atol = cls.token_atol
    want = adamw_reference(before.weights, before.grads, before.exp_avg, before.exp_avg_sq, before.step, params)
    slack = adamw_allowance(before, params, want, cls)
    if set(after.weights) != set(want.weights):
        raise AssertionError(f"[OPT-1] parameter names changed: {sorted(set(after.weights) ^ set(want.weights))}")
    if after.step != want.step:
        raise AssertionError(f"[OPT-7] step counter {after.step} after a step from {before.step}, expected {want.step}")
    for kind in ("weights", "exp_avg", "exp_avg_sq"):
        got_k, want_k, slack_k = getattr(after, kind), getattr(want, kind), slack[kind]
        for name, value in want_k.items():
            got = got_k[name]
            bad = ~(np.isfinite(got) & (np.abs(got - value) <= atol + slack_k[name]))
            if not np.any(bad):
                continue
            statement, what = "OPT-3", "does not match torch.optim.AdamW after global-norm clipping"
            for variant, sid, text in _DIAGNOSES:
                wrong = adamw_variant(before, params, variant)
                wrong_slack = adamw_allowance(before, params, wrong, cls)
                if all(_within(getattr(after, k), getattr(wrong, k), wrong_slack[k], atol) for k in slack):
                    statement, what = sid, f"matches {text}"
                    break
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"[{statement}] {kind} of {name} {what} ({int(bad.sum())}/{bad.size} elements outside "
                f"atol {atol:g} + the derived allowance, TOL-5); {mismatch_summary(got, value)}; first at "
                f"{list(first)}: actual {got[first]!r}, expected {value[first]!r} (allowance "
                f"{atol + slack_k[name][first]:.3e}); {params!r}, step {before.step} -> {after.step}"
            )
    for name, g in after.grads.items():
        if np.any(g != 0):
            raise AssertionError(f"[FB-5] gradient of {name} not cleared by optim_step")
    if metrics is None:
        return
    if "grad_norm:max" not in metrics or "step:max" not in metrics:
        raise AssertionError(f"[OPT-6] optim_step metrics lack grad_norm:max or step:max: {sorted(metrics)}")
    norm = metrics["grad_norm:max"]
    allowed = cls.sum_atol + cls.sum_rtol * want.grad_norm
    if not (math.isfinite(norm) and abs(norm - want.grad_norm) <= allowed):
        raise AssertionError(f"[OPT-6] grad_norm:max {norm!r}, expected the pre-clipping norm {want.grad_norm!r}")
    if metrics["step:max"] != want.step:
        raise AssertionError(f"[OPT-6] step:max {metrics['step:max']} != {want.step}")
