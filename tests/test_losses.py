"""Built-in losses (spec LOSS) against independent numpy float64 references.

Every reference below is written straight from the published formulas (notation: ``lp`` current
logprobs, ``q`` the ``logprobs`` input, ``A`` advantages, ``w`` weights, ``r = exp(lp - q)``,
``sg`` stop-gradient) and shares no code with ``tinker_std.losses``. Each reference returns the
per-token loss terms (already negated, so the loss is their sum) and the hand-derived gradient of
the loss with respect to ``lp``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tinker_std.conformance.reference import DEFAULT_CONFIGS
from tinker_std.losses import LOSSES, compute_loss
from tinker_std.types import LOSS_FN_TYPES

# Both sides compute in float64 from identical inputs; they differ only in summation order
# (a few ulps per term), so 1e-12 relative is ~4 orders of magnitude above the expected error.
VALUE_RTOL = 1e-12
# Gradients are elementwise products of O(1) numbers computed the same way on both sides; the
# absolute floor covers entries where terms cancel (e.g. DRO's A - beta*(lp - q)) near zero.
GRAD_RTOL = 1e-12
GRAD_ATOL = 1e-13
# Central differences with step h: truncation O(h^2) ~ 1e-12, rounding ~ eps*|f|/h ~ 1e-9 for
# |f| <= 100, so 1e-6 separates a right gradient from a wrong one (errors are O(0.01) or more).
FD_STEP = 1e-6
FD_ATOL = 1e-6
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

Datum = dict[str, Any]  # "lp" plus numpy inputs keyed like loss_fn_inputs
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


# --------------------------------------------------------------------------------------------
# running the library
# --------------------------------------------------------------------------------------------

INPUT_KEYS = (
    "weights",
    "logprobs",
    "advantages",
    "clip_low_threshold",
    "clip_high_threshold",
    "sequence_ratio_mask",
    "sampled_mask",
)


def torch_inputs(d: Datum) -> dict[str, torch.Tensor]:
    n = d["lp"].shape
    inputs = {"target_tokens": torch.zeros(n, dtype=torch.int64)}
    for key in INPUT_KEYS:
        if key in d:
            inputs[key] = torch.tensor(d[key], dtype=torch.float64)
    return inputs


def run(loss: str, batch: list[Datum], config: Mapping[str, Any] | None) -> tuple[float, list[np.ndarray]]:
    lps = [torch.tensor(d["lp"], dtype=torch.float64, requires_grad=True) for d in batch]
    value = compute_loss(loss, lps, [torch_inputs(d) for d in batch], config)
    value.backward()
    grads = [lp.grad.numpy() if lp.grad is not None else np.zeros(lp.shape) for lp in lps]
    return float(value.detach()), grads


def value_only(loss: str, batch: list[Datum], config: Mapping[str, Any] | None) -> float:
    with torch.no_grad():
        lps = [torch.tensor(d["lp"], dtype=torch.float64) for d in batch]
        return float(compute_loss(loss, lps, [torch_inputs(d) for d in batch], config))


def assert_value(actual: float, expected: float, scale: float) -> None:
    # relative to the sum of |terms| so that a sum that cancels to ~0 is still judged fairly
    assert abs(actual - expected) <= VALUE_RTOL * max(scale, abs(expected), 1e-300), (actual, expected)


def assert_grads(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=GRAD_RTOL, atol=GRAD_ATOL)


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


def test_cross_entropy_missing_weights_mean_ones() -> None:
    lp = np.array([-0.25, -1.5, -3.0])
    without, g_without = run("cross_entropy", [{"lp": lp}], None)
    with_ones, g_ones = run("cross_entropy", [{"lp": lp, "weights": np.ones(3)}], None)
    assert without == with_ones == 4.75
    assert_grads(g_without, [-np.ones(3)])
    assert_grads(g_ones, [-np.ones(3)])


def test_cross_entropy_k1_soft_targets_equal_flat_targets() -> None:
    rng = np.random.default_rng(0)
    lp = -rng.random(5) * 3
    w = rng.normal(size=5)
    flat, g_flat = run("cross_entropy", [{"lp": lp, "weights": w}], None)
    k1, g_k1 = run("cross_entropy", [{"lp": lp[:, None], "weights": w[:, None]}], None)
    assert k1 == pytest.approx(flat, rel=VALUE_RTOL)
    assert g_k1[0].shape == (5, 1)
    np.testing.assert_allclose(g_k1[0][:, 0], g_flat[0], rtol=GRAD_RTOL, atol=GRAD_ATOL)


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


def test_config_values_given_as_strings_are_honoured() -> None:
    d = {"lp": np.array([-1.0, -2.0]), "logprobs": np.array([-1.5, -1.0]), "advantages": np.array([1.0, -1.0])}
    value, _ = run("dro", [d], {"beta": "0.25"})
    # -( (-1)(1) - 0.125*0.25 + (-2)(-1) - 0.125*1 ) = -(1 - 0.03125 - 0.125)
    assert value == pytest.approx(-(1 - 0.03125 - 0.125), rel=VALUE_RTOL)


def test_ppo_hand_computed_example() -> None:
    # r = e^{0.5} = 1.6487 (above hi 1.2), e^{-0.5} = 0.6065 (below lo 0.8), e^0 = 1 (inside)
    lp = np.array([-1.0, -1.0, -1.0, -1.0])
    q = np.array([-1.5, -0.5, -1.0, -1.5])
    a = np.array([1.0, 1.0, -2.0, -1.0])
    value, grads = run("ppo", [{"lp": lp, "logprobs": q, "advantages": a}], None)
    e = math.exp(0.5)
    # t0: min(e, 1.2) = 1.2 (clipped, no grad); t1: min(1/e, 0.8) = 1/e (grad -1/e);
    # t2: min(-2, -2) = -2 (grad 2); t3: min(-e, -1.2) = -e (grad e)
    assert value == pytest.approx(-(1.2 + 1 / e - 2 - e), rel=VALUE_RTOL)
    np.testing.assert_allclose(grads[0], [0.0, -1 / e, 2.0, e], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_gspo_hand_computed_example() -> None:
    lp = np.array([-1.0, -2.0, -0.5])
    q = lp - np.array([0.1, 0.2, 0.3])
    a = np.array([1.0, -1.0, 2.0])
    mask = np.array([1.0, 0.0, 1.0])
    value, grads = run(
        "gspo",
        [{"lp": lp, "logprobs": q, "advantages": a, "sequence_ratio_mask": mask}],
        {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    )
    s = math.exp(0.2)  # mean of the masked log-ratios 0.1 and 0.3; 1.2214 > hi
    # t0: min(s, 1.2) = 1.2 (no grad); t1: min(-s, -1.2) = -s (grad s); t2: min(2s, 2.4) = 2.4
    assert value == pytest.approx(-(1.2 - s + 2.4), rel=VALUE_RTOL)
    np.testing.assert_allclose(grads[0], [0.0, s, 0.0], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_gspo_empty_mask_means_ratio_one() -> None:
    d = {
        "lp": np.array([-1.0, -2.0]),
        "logprobs": np.array([-3.0, 0.0]),
        "advantages": np.array([0.5, -1.5]),
        "sequence_ratio_mask": np.zeros(2),
    }
    value, grads = run("gspo", [d], None)
    assert value == pytest.approx(1.0, rel=VALUE_RTOL)  # -(0.5 - 1.5), s = 1 inside the band
    np.testing.assert_allclose(grads[0], [-0.5, 1.5], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_gspo_gradient_is_not_the_derivative_of_its_value() -> None:
    """The sg() terms cancel in value but not in gradient: dL/dlp_t = -s*A_t, no cross terms."""
    d = {"lp": np.array([-1.0, -2.0]), "logprobs": np.array([-1.1, -2.05]), "advantages": np.array([1.0, 2.0])}
    cfg = {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0}
    _, grads = run("gspo", [d], cfg)
    s = math.exp(0.075)
    np.testing.assert_allclose(grads[0], [-s, -2 * s], rtol=GRAD_RTOL, atol=GRAD_ATOL)
    # d(value)/dlp_0 through log s would be -s*(A_0 + A_1)/2 = -1.5 s, not -s
    plus = {**d, "lp": d["lp"] + np.array([FD_STEP, 0.0])}
    minus = {**d, "lp": d["lp"] - np.array([FD_STEP, 0.0])}
    fd0 = (value_only("gspo", [plus], cfg) - value_only("gspo", [minus], cfg)) / (2 * FD_STEP)
    assert fd0 == pytest.approx(-1.5 * s, abs=FD_ATOL)


def test_cispo_gradient_stops_at_the_ratio() -> None:
    d = {"lp": np.array([-1.0, -1.0]), "logprobs": np.array([-1.2, -3.0]), "advantages": np.array([2.0, 1.0])}
    _, grads = run("cispo", [d], None)
    # r = e^0.2 inside [0, 4]; r = e^2 = 7.39 clipped to 4; gradient is -clip(r) * A only
    np.testing.assert_allclose(grads[0], [-2 * math.exp(0.2), -4.0], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_unknown_loss_and_empty_batch_are_rejected() -> None:
    with pytest.raises(KeyError):
        compute_loss("nope", [torch.zeros(1)], [{}])
    with pytest.raises(ValueError, match="at least one datum"):
        compute_loss("cross_entropy", [], [])
