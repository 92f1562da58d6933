"""Built-in losses (spec LOSS) on hand-computed examples and edge cases: fixed inputs, values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from losses_support import FD_ATOL, FD_STEP, GRAD_ATOL, GRAD_RTOL, VALUE_RTOL, assert_grads, run, value_only

from tinker_std.losses import compute_loss


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
