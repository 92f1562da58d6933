"""Built-in losses (spec LOSS) against independent numpy float64 references, on hypothesis-drawn data.

Every reference below is written straight from the published formulas (notation: ``lp`` current
logprobs, ``q`` the ``logprobs`` input, ``A`` advantages, ``w`` weights, ``r = exp(lp - q)``,
``sg`` stop-gradient) and shares no code with ``tinker_std.losses``. Each reference returns the
per-token loss terms (already negated, so the loss is their sum) and the hand-derived gradient of
the loss with respect to ``lp``.

Hand-computed examples and edge cases are in ``tests/test_losses_examples.py``; the tolerances and
the runner both use are in ``tests/losses_support.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from losses_support import (
    FD_ATOL,
    FD_STEP,
    GRAD_ATOL,
    GRAD_RTOL,
    VALUE_RTOL,
    Datum,
    assert_grads,
    assert_value,
    run,
    torch_inputs,
    value_only,
)

from tinker_std.conformance.reference import DEFAULT_CONFIGS
from tinker_std.losses import LOSSES, compute_loss
from tinker_std.types import LOSS_FN_TYPES

# Ratios closer than this to a clip boundary are rejected: there the loss has a kink and the
# gradient (and any finite difference straddling it) is ill-defined.
BOUNDARY_MARGIN = 1e-4

HYPOTHESIS = settings(max_examples=30, deadline=None)

#: The spec's config defaults (03-losses.md), as the conformance oracle holds them: one table.
DEFAULTS = DEFAULT_CONFIGS
CUSTOM: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5},
    "cispo": {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3},
    "dro": {"beta": 0.7},
    "gspo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.25},
    "stable_reinforce": {"kl_coeff": 0.3, "ratio_cap": 1.5},
}
RL_LOSSES = ("importance_sampling", "ppo", "cispo", "dro", "gspo")
CLIPPED_LOSSES = ("ppo", "cispo", "gspo")


# --------------------------------------------------------------------------------------------
# numpy references
# --------------------------------------------------------------------------------------------

Reference = Callable[[Datum, Mapping[str, float]], tuple[np.ndarray, np.ndarray]]


def _bounds(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    n = d["lp"].shape
    lo = d.get("clip_low_threshold", np.full(n, cfg["clip_low_threshold"]))
    hi = d.get("clip_high_threshold", np.full(n, cfg["clip_high_threshold"]))
    return lo, hi


def ref_cross_entropy(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    w = d.get("weights", np.ones_like(d["lp"]))
    return -w * d["lp"], -w


def ref_importance_sampling(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(d["lp"] - d["logprobs"])
    a = d["advantages"]
    return -r * a, -r * a


def ref_ppo(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(d["lp"] - d["logprobs"])
    a = d["advantages"]
    lo, hi = _bounds(d, cfg)
    unclipped = r * a
    clipped = np.clip(r, lo, hi) * a
    # d(r*A)/dlp = r*A; the clipped branch is constant in lp outside [lo, hi]; it only wins
    # the min when it is strictly smaller, which can only happen outside [lo, hi].
    grad = np.where(clipped < unclipped, 0.0, -r * a)
    return -np.minimum(unclipped, clipped), grad


def ref_cispo(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(d["lp"] - d["logprobs"])
    a = d["advantages"]
    lo, hi = _bounds(d, cfg)
    c = np.clip(r, lo, hi)  # stop-gradient: a constant factor
    return -c * d["lp"] * a, -c * a


def ref_dro(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    lp, q, a, beta = d["lp"], d["logprobs"], d["advantages"], cfg["beta"]
    return -(lp * a - 0.5 * beta * (lp - q) ** 2), -(a - beta * (lp - q))


def ref_gspo(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    lp, q, a = d["lp"], d["logprobs"], d["advantages"]
    mask = d.get("sequence_ratio_mask")
    members = ((a != 0) | (q != 0)) if mask is None else mask != 0  # LOSS-7 default: sampled positions
    log_s = float(np.mean(lp[members] - q[members])) if members.any() else 0.0
    # s_t = exp(log s + lp_t - sg(lp_t)): equal to exp(log s) in value, ds_t/dlp_t = s_t, and no
    # gradient through log s (it is built from sg(lp)).
    s = np.full(lp.shape, math.exp(log_s))
    lo, hi = _bounds(d, cfg)
    unclipped = s * a
    clipped = np.clip(s, lo, hi) * a
    grad = np.where(clipped < unclipped, 0.0, -s * a)
    return -np.minimum(unclipped, clipped), grad


def ref_stable_reinforce(d: Datum, cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    # LOSS-16 on the sampled positions m: -sg(min(r, cap))*A*lp + kl*(r - 1 - log r), r = exp(lp - q);
    # d/dlp: -min(r, cap)*A + kl*(r - 1)
    lp, q, a, m = d["lp"], d["logprobs"], d["advantages"], d["sampled_mask"]
    log_r = (lp - q) * m
    r = np.exp(log_r)
    w = np.minimum(r, cfg["ratio_cap"])
    terms = (-w * a * lp + cfg["kl_coeff"] * (r - 1.0 - log_r)) * m
    return terms, (-w * a + cfg["kl_coeff"] * (r - 1.0)) * m


REFERENCES: dict[str, Reference] = {
    "cross_entropy": ref_cross_entropy,
    "importance_sampling": ref_importance_sampling,
    "ppo": ref_ppo,
    "cispo": ref_cispo,
    "dro": ref_dro,
    "gspo": ref_gspo,
    "stable_reinforce": ref_stable_reinforce,
}


def reference(loss: str, batch: list[Datum], cfg: Mapping[str, float]) -> tuple[float, float, list[np.ndarray]]:
    """(loss value, sum of |terms| for the cancellation-aware tolerance, per-datum gradients)."""
    terms, grads = zip(*(REFERENCES[loss](d, cfg) for d in batch), strict=True)
    value = sum(float(t.sum()) for t in terms)
    scale = sum(float(np.abs(t).sum()) for t in terms)
    return value, scale, list(grads)


def ratios(loss: str, d: Datum) -> np.ndarray:
    """The quantity that is clipped: r per token, or GSPO's sequence ratio."""
    if loss == "gspo":
        mask = d.get("sequence_ratio_mask")
        m = ((d["advantages"] != 0) | (d["logprobs"] != 0)) if mask is None else mask != 0
        log_s = float(np.mean(d["lp"][m] - d["logprobs"][m])) if m.any() else 0.0
        return np.full(d["lp"].shape, math.exp(log_s))
    return np.exp(d["lp"] - d["logprobs"])


def assume_off_boundaries(loss: str, batch: list[Datum], cfg: Mapping[str, float]) -> None:
    if loss not in CLIPPED_LOSSES:
        return
    for d in batch:
        r = ratios(loss, d)
        lo, hi = _bounds(d, cfg)
        assume(np.all(np.abs(r - lo) > BOUNDARY_MARGIN) and np.all(np.abs(r - hi) > BOUNDARY_MARGIN))


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------


def _vec(n: int, lo: float, hi: float) -> st.SearchStrategy[np.ndarray]:
    return st.lists(st.floats(lo, hi, allow_nan=False), min_size=n, max_size=n).map(
        lambda xs: np.asarray(xs, dtype=np.float64)
    )


@st.composite
def datum(draw: st.DrawFn, loss: str, per_token_clip: bool = False, k: int | None = None) -> Datum:
    n = draw(st.integers(1, 6))
    shape_n = n if k is None else n * k
    lp = draw(_vec(shape_n, -5.0, 0.0))
    if k is not None:
        lp = lp.reshape(n, k)
    d: Datum = {"lp": lp}
    if loss == "cross_entropy":
        if draw(st.booleans()):
            # arbitrary real weights, negative ones included (forward_backward_custom sends -grad)
            d["weights"] = draw(_vec(shape_n, -2.0, 2.0)).reshape(lp.shape)
        return d
    # q = lp - delta keeps r = exp(delta) in [0.13, 7.4]: below, inside and above every band
    delta = draw(_vec(n, -2.0, 2.0))
    if loss == "gspo" and draw(st.booleans()):
        # also hit the narrow default band: a tiny common log-ratio
        delta = np.full(n, draw(st.floats(-2e-4, 3e-4)))
    d["logprobs"] = lp - delta
    d["advantages"] = draw(_vec(n, -2.0, 2.0))
    if loss == "gspo" and draw(st.booleans()):
        # membership is "!= 0", so 0.5 counts like 1
        d["sequence_ratio_mask"] = np.asarray(
            draw(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=n, max_size=n)), dtype=np.float64
        )
    if loss == "stable_reinforce":
        d["sampled_mask"] = np.asarray(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    if per_token_clip:
        if draw(st.booleans()):
            d["clip_low_threshold"] = draw(_vec(n, 0.3, 0.95))
        if draw(st.booleans()):
            d["clip_high_threshold"] = draw(_vec(n, 1.05, 3.0))
    return d


def batches(loss: str, per_token_clip: bool = False, k: int | None = None) -> st.SearchStrategy[list[Datum]]:
    return st.lists(datum(loss, per_token_clip, k), min_size=1, max_size=3)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def test_registry_covers_every_loss_type_with_documented_defaults() -> None:
    assert set(LOSSES) == set(LOSS_FN_TYPES) == set(DEFAULTS)
    for name, defaults in DEFAULTS.items():
        assert dict(LOSSES[name].config_defaults) == defaults, name
    assert LOSSES["cross_entropy"].allows_soft_targets
    assert "sequence_ratio_mask" in LOSSES["gspo"].optional_inputs


@pytest.mark.parametrize("custom", [False, True], ids=["default-config", "custom-config"])
@pytest.mark.parametrize("loss", list(REFERENCES))
@HYPOTHESIS
@given(data=st.data())
def test_value_and_gradient_match_reference(loss: str, custom: bool, data: st.DataObject) -> None:
    batch = data.draw(batches(loss))
    cfg = CUSTOM[loss] if custom else DEFAULTS[loss]
    assume_off_boundaries(loss, batch, cfg)
    value, grads = run(loss, batch, dict(cfg) if custom else None)
    ref_value, scale, ref_grads = reference(loss, batch, cfg)
    assert_value(value, ref_value, scale)
    assert_grads(grads, ref_grads)


@pytest.mark.parametrize("loss", ["cross_entropy", "importance_sampling", "ppo", "dro"])
@HYPOTHESIS
@given(data=st.data())
def test_gradient_matches_finite_differences(loss: str, data: st.DataObject) -> None:
    # Only for losses without stop-gradients: for cispo/gspo the gradient deliberately differs
    # from the derivative of the value (see test_gspo_gradient_is_not_the_derivative_of_its_value).
    batch = data.draw(batches(loss))
    cfg = DEFAULTS[loss]
    assume_off_boundaries(loss, batch, cfg)
    _, grads = run(loss, batch, None)
    for i, d in enumerate(batch):
        fd = np.zeros_like(d["lp"])
        for idx in np.ndindex(d["lp"].shape):
            plus = [dict(x) for x in batch]
            minus = [dict(x) for x in batch]
            plus[i]["lp"] = d["lp"].copy()
            minus[i]["lp"] = d["lp"].copy()
            plus[i]["lp"][idx] += FD_STEP
            minus[i]["lp"][idx] -= FD_STEP
            fd[idx] = (value_only(loss, plus, None) - value_only(loss, minus, None)) / (2 * FD_STEP)
        np.testing.assert_allclose(grads[i], fd, rtol=0, atol=FD_ATOL)


@pytest.mark.parametrize("k", [1, 3])
@HYPOTHESIS
@given(data=st.data())
def test_cross_entropy_soft_targets_match_reference(k: int, data: st.DataObject) -> None:
    batch = data.draw(batches("cross_entropy", k=k))
    value, grads = run("cross_entropy", batch, None)
    ref_value, scale, ref_grads = reference("cross_entropy", batch, {})
    assert_value(value, ref_value, scale)
    assert_grads(grads, ref_grads)


@pytest.mark.parametrize("loss", CLIPPED_LOSSES)
@HYPOTHESIS
@given(data=st.data())
def test_per_token_clip_inputs_override_config(loss: str, data: st.DataObject) -> None:
    """LOSS-9: clip_*_threshold tensors in loss_fn_inputs replace the config values per token."""
    batch = data.draw(batches(loss, per_token_clip=True))
    config = {"clip_low_threshold": 0.6, "clip_high_threshold": 1.6}
    assume_off_boundaries(loss, batch, config)
    value, grads = run(loss, batch, config)
    ref_value, scale, ref_grads = reference(loss, batch, config)  # _bounds prefers per-token arrays
    assert_value(value, ref_value, scale)
    assert_grads(grads, ref_grads)


def test_per_token_clip_inputs_change_the_result() -> None:
    """Guard for the test above: the per-token bounds used there really differ from the config."""
    d = {"lp": np.array([-1.0]), "logprobs": np.array([-1.5]), "advantages": np.array([1.0])}
    # r = e^0.5 = 1.6487; config hi 1.6 clips to 1.6, a per-token hi of 1.1 clips to 1.1
    config = {"clip_low_threshold": 0.6, "clip_high_threshold": 1.6}
    plain, _ = run("ppo", [d], config)
    per_token, _ = run("ppo", [{**d, "clip_high_threshold": np.array([1.1])}], config)
    assert plain == pytest.approx(-1.6, rel=VALUE_RTOL)
    assert per_token == pytest.approx(-1.1, rel=VALUE_RTOL)


@pytest.mark.parametrize("loss", list(REFERENCES))
@HYPOTHESIS
@given(data=st.data())
def test_sum_not_mean_duplicate_datum_doubles_loss_and_gradient(loss: str, data: st.DataObject) -> None:
    d = data.draw(datum(loss))
    lp = torch.tensor(d["lp"], dtype=torch.float64, requires_grad=True)
    inputs = torch_inputs(d)
    single = compute_loss(loss, [lp], [inputs])
    single.backward()
    g1 = lp.grad.clone()
    lp.grad = None
    double = compute_loss(loss, [lp, lp], [inputs, inputs])
    double.backward()
    # the two per-datum values are computed identically and v + v == 2v exactly in floating point
    assert float(double.detach()) == 2 * float(single.detach())
    # autograd may add the per-use contributions (lp appears several times in e.g. DRO) in another
    # order, so the gradient is equal only up to rounding
    np.testing.assert_allclose(lp.grad.numpy(), 2 * g1.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("loss", list(REFERENCES))
@HYPOTHESIS
@given(data=st.data())
def test_sum_not_mean_within_a_datum(loss: str, data: st.DataObject) -> None:
    """Repeating every token of a datum doubles the loss (a token mean would leave it unchanged)."""
    d = data.draw(datum(loss))
    tiled = {key: np.concatenate([v, v]) for key, v in d.items()}
    base = value_only(loss, [d], None)
    _, scale, _ = reference(loss, [tiled], DEFAULTS[loss])
    assert_value(value_only(loss, [tiled], None), 2 * base, scale)


@pytest.mark.parametrize("loss", ["importance_sampling", "ppo", "cispo", "gspo"])
@HYPOTHESIS
@given(data=st.data())
def test_zero_advantages_give_zero_gradient(loss: str, data: st.DataObject) -> None:
    batch = data.draw(batches(loss))
    for d in batch:
        d["advantages"] = np.zeros_like(d["advantages"])
    value, grads = run(loss, batch, None)
    assert value == 0.0
    for g in grads:
        assert np.all(g == 0.0)


@HYPOTHESIS
@given(data=st.data())
def test_dro_with_q_equal_to_lp_is_minus_sum_lp_times_advantage(data: st.DataObject) -> None:
    batch = data.draw(batches("dro"))
    for d in batch:
        d["logprobs"] = d["lp"].copy()
    value, grads = run("dro", batch, {"beta": 3.0})
    terms = [-d["lp"] * d["advantages"] for d in batch]
    expected = sum(float(t.sum()) for t in terms)
    assert_value(value, expected, sum(float(np.abs(t).sum()) for t in terms))
    # the quadratic penalty has zero slope at lp == q: gradient is -A
    assert_grads(grads, [-d["advantages"] for d in batch])
