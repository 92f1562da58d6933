"""``engine.adamw_step`` (spec OPT-1..OPT-7) against a hand-written numpy AdamW and torch's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinker_std.training_math import CLIP_EPS, adamw_step
from tinker_std.types import AdamParams

# Parameters are float64 and O(1); one step differs from the reference only by rounding
# (~1e-16 per op, a handful of ops per step), so 1e-12 absolute leaves ample room while any
# real deviation (a wrong beta, a missing bias correction, clipping in the wrong place) moves
# weights by >= 1e-6.
ATOL = 1e-12
# grad_norm metric: a float64 norm of a few numbers computed two ways
NORM_RTOL = 1e-12

SHAPES = [(3,), (2, 2), (1,)]


class NumpyAdamW:
    """AdamW written from the formulas, with global-norm clipping before the moment update."""

    def __init__(self, params: list[np.ndarray]) -> None:
        self.params = [p.copy() for p in params]
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray | None], hp: AdamParams) -> float:
        self.t += 1
        g = [np.zeros_like(p) if gi is None else gi.copy() for p, gi in zip(self.params, grads, strict=True)]
        norm = math.sqrt(sum(float(np.sum(gi * gi)) for gi in g))
        if hp.grad_clip_norm > 0:
            coef = min(1.0, hp.grad_clip_norm / (norm + 1e-6))
            g = [gi * coef for gi in g]
        lr, b1, b2 = hp.learning_rate, hp.beta1, hp.beta2
        for i, gi in enumerate(g):
            self.params[i] = self.params[i] - lr * hp.weight_decay * self.params[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * gi
            self.v[i] = b2 * self.v[i] + (1 - b2) * gi * gi
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            self.params[i] = self.params[i] - lr * m_hat / (np.sqrt(v_hat) + hp.eps)
        return norm


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.tensor(rng.normal(size=s), dtype=torch.float64)) for s in SHAPES]


def set_grads(params: list[torch.nn.Parameter], grads: list[np.ndarray | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else torch.tensor(g, dtype=torch.float64)


def numpy_of(params: list[torch.nn.Parameter]) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in params]


# An LR schedule with every hyperparameter varied at least once; grad scale per step so that
# clipping is active in some steps and not in others; None marks a missing gradient.
SCHEDULE: list[tuple[AdamParams, float, tuple[bool, ...]]] = [
    (AdamParams(learning_rate=1e-2), 1.0, (True, True, True)),
    (AdamParams(learning_rate=5e-3, weight_decay=0.1), 3.0, (True, True, True)),
    (AdamParams(learning_rate=1e-2, beta1=0.5, beta2=0.9, eps=1e-3), 0.1, (True, False, True)),
    (AdamParams(learning_rate=2e-3, grad_clip_norm=0.5), 10.0, (True, True, True)),  # clip active
    (AdamParams(learning_rate=1e-2, grad_clip_norm=100.0, eps=1e-8), 1.0, (False, True, True)),  # inactive
    (
        AdamParams(learning_rate=3e-2, beta1=0.8, beta2=0.99, weight_decay=0.01, grad_clip_norm=1.0),
        2.0,
        (True, True, False),
    ),
    (AdamParams(learning_rate=0.0, weight_decay=0.5), 1.0, (True, True, True)),  # lr 0: no movement
]


def test_matches_numpy_reference_over_a_schedule() -> None:
    params = make_params()
    opt = torch.optim.AdamW(params)
    ref = NumpyAdamW(numpy_of(params))
    rng = np.random.default_rng(1)
    for t, (hp, scale, present) in enumerate(SCHEDULE, start=1):
        grads = [rng.normal(size=s) * scale if here else None for s, here in zip(SHAPES, present, strict=True)]
        set_grads(params, grads)
        before = numpy_of(params)
        metrics = adamw_step(opt, hp).metrics
        ref_norm = ref.step(grads, hp)
        for got, want in zip(numpy_of(params), ref.params, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"step {t}")
        assert metrics is not None
        assert metrics["grad_norm:max"] == pytest.approx(ref_norm, rel=NORM_RTOL)
        assert metrics["step:max"] == t
        assert all(p.grad is None for p in params), "gradients must be cleared after the step"
        if hp.learning_rate == 0.0:
            for got, old in zip(numpy_of(params), before, strict=True):
                assert np.array_equal(got, old)
        else:
            assert not all(np.array_equal(g, o) for g, o in zip(numpy_of(params), before, strict=True))


def test_matches_torch_adamw_with_clip_grad_norm() -> None:
    ours = make_params()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = torch.optim.AdamW(ours)
    opt_theirs = torch.optim.AdamW(theirs)
    rng = np.random.default_rng(2)
    for hp, scale, _ in SCHEDULE:
        grads = [rng.normal(size=s) * scale for s in SHAPES]
        set_grads(ours, grads)
        set_grads(theirs, grads)
        adamw_step(opt_ours, hp)
        if hp.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(theirs, hp.grad_clip_norm)
        for group in opt_theirs.param_groups:
            group.update(lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay)
        opt_theirs.step()
        opt_theirs.zero_grad()
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=0, atol=ATOL)


def test_clipping_uses_the_global_norm_before_the_moment_update() -> None:
    p1 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p2 = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.AdamW([p1, p2])
    set_grads([p1, p2], [np.array([3.0, 0.0]), np.array([4.0])])  # global norm 5, per-param 3 and 4
    metrics = adamw_step(opt, AdamParams(learning_rate=1e-3, grad_clip_norm=1.0)).metrics
    assert metrics is not None
    assert metrics["grad_norm:max"] == 5.0  # reported before clipping
    coef = 1.0 / (5.0 + CLIP_EPS)
    assert CLIP_EPS == 1e-6
    # the first moment saw the clipped gradient: m = (1 - beta1) * coef * g
    np.testing.assert_allclose(opt.state[p1]["exp_avg"].numpy(), [0.1 * 3.0 * coef, 0.0], rtol=1e-12)
    np.testing.assert_allclose(opt.state[p2]["exp_avg"].numpy(), [0.1 * 4.0 * coef], rtol=1e-12)
    np.testing.assert_allclose(opt.state[p2]["exp_avg_sq"].numpy(), [0.05 * 16.0 * coef**2], rtol=1e-12)


def test_grad_clip_norm_zero_disables_clipping() -> None:
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = torch.optim.AdamW([p])
    set_grads([p], [np.array([600.0, 800.0])])
    metrics = adamw_step(opt, AdamParams(learning_rate=1e-3, grad_clip_norm=0.0)).metrics
    assert metrics is not None
    assert metrics["grad_norm:max"] == 1000.0
    np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), [60.0, 80.0], rtol=1e-12)


def test_missing_gradients_count_as_zero_and_still_step() -> None:
    params = make_params(3)
    opt = torch.optim.AdamW(params)
    hp = AdamParams(learning_rate=1e-2)
    grads = [np.full(s, 0.5) for s in SHAPES]
    set_grads(params, grads)
    adamw_step(opt, hp)
    after_one = numpy_of(params)
    # step 2 without any gradient: moments decay and the weights move by the old momentum
    metrics = adamw_step(opt, hp).metrics
    assert metrics is not None
    assert metrics["step:max"] == 2
    assert metrics["grad_norm:max"] == 0.0
    b1, b2, lr, eps = hp.beta1, hp.beta2, hp.learning_rate, hp.eps
    m1, v1 = (1 - b1) * 0.5, (1 - b2) * 0.25
    expected_delta = lr * (b1 * m1 / (1 - b1**2)) / (math.sqrt(b2 * v1 / (1 - b2**2)) + eps)
    for got, old in zip(numpy_of(params), after_one, strict=True):
        np.testing.assert_allclose(old - got, np.full(old.shape, expected_delta), rtol=0, atol=ATOL)
    for p in params:
        assert int(opt.state[p]["step"]) == 2


def test_parameter_without_any_gradient_gets_state_and_only_decays() -> None:
    with_grad = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    never = torch.nn.Parameter(torch.full((2,), 2.0, dtype=torch.float64))
    opt = torch.optim.AdamW([with_grad, never])
    set_grads([with_grad, never], [np.array([1.0, -1.0]), None])
    metrics = adamw_step(opt, AdamParams(learning_rate=0.1, weight_decay=0.5)).metrics
    assert metrics is not None
    assert metrics["step:max"] == 1
    assert int(opt.state[never]["step"]) == 1
    # zero moments give a zero Adam update; decoupled weight decay still applies: 2 * (1 - 0.05)
    np.testing.assert_allclose(never.detach().numpy(), [1.9, 1.9], rtol=0, atol=ATOL)


def test_hyperparameters_apply_to_every_param_group() -> None:
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.AdamW([{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.0, "weight_decay": 0.3}])
    ref = NumpyAdamW([a.detach().numpy(), b.detach().numpy()])
    grads = [np.array([0.3, -0.2]), np.array([1.0, 2.0, -2.0])]
    set_grads([a, b], grads)
    hp = AdamParams(learning_rate=0.01, grad_clip_norm=1.0)
    metrics = adamw_step(opt, hp).metrics
    ref_norm = ref.step(grads, hp)
    assert metrics is not None
    assert metrics["grad_norm:max"] == pytest.approx(ref_norm, rel=NORM_RTOL)
    np.testing.assert_allclose(a.detach().numpy(), ref.params[0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(b.detach().numpy(), ref.params[1], rtol=0, atol=ATOL)


def test_zero_learning_rate_leaves_weights_unchanged_but_counts_the_step() -> None:
    params = make_params(4)
    before = numpy_of(params)
    opt = torch.optim.AdamW(params)
    set_grads(params, [np.ones(s) for s in SHAPES])
    metrics = adamw_step(opt, AdamParams(learning_rate=0.0, weight_decay=0.9, grad_clip_norm=0.1)).metrics
    assert metrics is not None
    assert metrics["step:max"] == 1
    for got, old in zip(numpy_of(params), before, strict=True):
        assert np.array_equal(got, old)
    assert all(p.grad is None for p in params)
