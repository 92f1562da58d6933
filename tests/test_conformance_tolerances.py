"""The conformance checks pass every correct float32/bfloat16 implementation and fail wrong ones
(issue 19, deliverable 1; spec README TOL-5, 07 SMP-10/SMP-11).

"Correct" implementations are built here from torch's own ops, in the working precision of the
class: ``torch.optim.AdamW`` after ``torch.nn.utils.clip_grad_norm_`` on float32 or bfloat16
parameters; ``log_softmax`` logprobs and ``torch.multinomial`` draws from float32 or bfloat16
logits. Hypothesis draws many parameter sets, including the ill-conditioned corner of issue 19
(``beta2 = 0``, ``eps = 1e-12``, a zero-gradient step: weights of ~1e10), and every check must
pass. Known-wrong variants (bias correction with ``t - 1``, coupled or missing weight decay,
clipping skipped or per tensor, temperature ignored, top-k/top-p off by one) must fail, naming the
statement they break.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinker_std import AdamParams, SamplingParams
from tinker_std.conformance.adamw import AdamState, check_adamw_step
from tinker_std.conformance.sampling_stats import DrawCheck, _allowance, _membership, check_draws, choose_scenarios
from tinker_std.conformance.tolerances import resolve

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# -- optimizer -------------------------------------------------------------------------------------


def _state(params: list[torch.nn.Parameter], grads: list[torch.Tensor], opt: torch.optim.Optimizer) -> AdamState:
    def f(x: torch.Tensor) -> np.ndarray:
        return x.detach().to(torch.float64).numpy().copy()

    states = [opt.state.get(p, {}) for p in params]
    return AdamState(
        weights={f"p{i}": f(p) for i, p in enumerate(params)},
        grads={f"p{i}": f(g) for i, g in enumerate(grads)},
        exp_avg={
            f"p{i}": f(s.get("exp_avg", torch.zeros_like(p)))
            for i, (p, s) in enumerate(zip(params, states, strict=True))
        },
        exp_avg_sq={
            f"p{i}": f(s.get("exp_avg_sq", torch.zeros_like(p)))
            for i, (p, s) in enumerate(zip(params, states, strict=True))
        },
        step=max((int(s["step"]) for s in states if "step" in s), default=0),
    )


StepFn = Callable[[list[torch.nn.Parameter], AdamParams, torch.optim.Optimizer], None]


def _clip_global(params: list[torch.nn.Parameter], hp: AdamParams) -> None:
    if hp.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, hp.grad_clip_norm)


def _torch_adamw(params: list[torch.nn.Parameter], hp: AdamParams, opt: torch.optim.Optimizer) -> None:
    _clip_global(params, hp)
    opt.step()


def _run(
    dtype: torch.dtype,
    shapes: list[tuple[int, ...]],
    steps: list[tuple[float | None, AdamParams]],
    seed: int,
    step_fn: StepFn = _torch_adamw,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    tolerance: str = "fp32",
) -> None:
    """Run ``steps`` (gradient scale or ``None`` for a zero gradient, hyperparameters) on fresh
    parameters and check every step with ``check_adamw_step`` under ``tolerance``."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    opt = optimizer(params, lr=1e-3, foreach=False)
    for scale, hp in steps:
        grads = [
            torch.zeros_like(p) if scale is None else (torch.randn(p.shape, generator=gen) * scale).to(dtype)
            for p in params
        ]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        before = _state(params, grads, opt)
        for group in opt.param_groups:
            group.update(lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay)
        step_fn(params, hp, opt)
        after = _state(params, [torch.zeros_like(p) for p in params], opt)
        check_adamw_step(before, after, hp, None, tolerance)


@st.composite
def _hyper(draw: st.DrawFn, ill_conditioned: bool = True) -> AdamParams:
    beta2 = draw(st.sampled_from([0.0, 0.5, 0.95, 0.999, 0.9999]))
    return AdamParams(
        learning_rate=draw(st.one_of(st.just(0.0), st.floats(1e-5, 0.1), st.sampled_from([0.03125, 1.0]))),
        beta1=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
        beta2=beta2,
        eps=draw(st.sampled_from([1e-12, 1e-8, 1e-3] if ill_conditioned else [1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.5, 2.0])),
        grad_clip_norm=draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 100.0])),
    )


_SHAPES = st.lists(st.sampled_from([(1,), (7,), (4, 3), (16, 8), (64,)]), min_size=1, max_size=3)
_STEPS = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from([1e-8, 1e-4, 1e-2, 1.0, 30.0])), _hyper()), min_size=1, max_size=4
)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@given(shapes=_SHAPES, steps=_STEPS, seed=st.integers(0, 2**16))
@SETTINGS
def test_torch_adamw_passes_the_optimizer_check(
    precision: str, shapes: list[tuple[int, ...]], steps: list[tuple[float | None, AdamParams]], seed: int
) -> None:
    _run(DTYPES[precision], shapes, steps, seed, tolerance=precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_issue_19_corner_passes(precision: str) -> None:
    """beta2 = 0, eps = 1e-12, then a zero-gradient step: the update is m / eps (weights ~1e10);
    the fixed per-element atol failed 32/32 elements of a correct float32 AdamW here."""
    hp = AdamParams(learning_rate=0.03125, beta1=0.5, beta2=0.0, eps=1e-12)
    _run(DTYPES[precision], [(32,)], [(1.0, hp), (None, hp), (None, hp)], 0, tolerance=precision)


def _manual_step(variant: str) -> StepFn:
    """A wrong AdamW in the working precision, written with torch ops."""

    def step(params: list[torch.nn.Parameter], hp: AdamParams, opt: torch.optim.Optimizer) -> None:
        if variant == "per_tensor_clip":
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], hp.grad_clip_norm)
        elif variant != "no_clip":
            _clip_global(params, hp)
        for p in params:
            state = opt.state.setdefault(p, {})
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            t = float(state["step"]) + (0 if variant == "stale_step" else 1)
            state["step"] = torch.tensor(t)
            g = p.grad
            assert g is not None
            if variant == "coupled_decay":
                g = g + hp.weight_decay * p.detach()
            elif variant != "no_decay":
                p.data.mul_(1 - hp.learning_rate * hp.weight_decay)
            state["exp_avg"].lerp_(g, 1 - hp.beta1)
            state["exp_avg_sq"].mul_(hp.beta2).addcmul_(g, g, value=1 - hp.beta2)
            tc = t - 1 if variant == "bias_t_minus_1" else max(t, 1.0)
            bc1, bc2 = 1 - hp.beta1**tc, 1 - hp.beta2**tc
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bc2) if bc2 > 0 else state["exp_avg_sq"] * math.inf).add_(
                hp.eps
            )
            p.data.addcdiv_(state["exp_avg"], denom, value=-hp.learning_rate / bc1 if bc1 else -math.inf)

    return step


WRONG = {
    # variant: (statement, hyperparameters that make it visible)
    "bias_t_minus_1": ("OPT-3", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8)),
    "coupled_decay": ("OPT-2", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.5)),
    "no_decay": ("OPT-2", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=2.0)),
    "no_clip": ("OPT-4", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-3, grad_clip_norm=1e-3)),
    "per_tensor_clip": ("OPT-4", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-3, grad_clip_norm=1e-3)),
    "stale_step": ("OPT-7", AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8)),
}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", sorted(WRONG))
@given(seed=st.integers(0, 2**16), scales=st.lists(st.sampled_from([1e-2, 1.0, 30.0]), min_size=2, max_size=3))
@settings(max_examples=15, deadline=None, derandomize=True, database=None)
def test_wrong_adamw_variants_fail_naming_their_statement(
    precision: str, variant: str, seed: int, scales: list[float]
) -> None:
    statement, hp = WRONG[variant]
    if precision == "bf16":  # the class's atol (5e-2) hides smaller effects: make them large
        hp = hp.model_copy(update={"learning_rate": 1.0})
    if variant == "coupled_decay":  # visible only while the gradient is not much larger than λθ
        scales = [min(s, 1.0) for s in scales]
    shapes = [(16, 8), (8,)]  # two tensors of different norms: per-tensor clipping differs from global
    run = _run
    with pytest.raises(AssertionError, match=rf"\[{statement}\]"):
        run(DTYPES[precision], shapes, [(s, hp) for s in scales], seed, _manual_step(variant), tolerance=precision)


def test_the_manual_adamw_is_right_when_not_mutated() -> None:
    """The wrong variants share one hand-written step; unmutated it passes, so the failures above
    come from the mutation alone."""
    for hp in (*(h for _, h in WRONG.values()),):
        _run(torch.float32, [(16, 8), (8,)], [(1.0, hp), (0.01, hp), (None, hp)], 3, _manual_step("none"))


def test_torch_adam_with_l2_decay_is_caught_as_coupled() -> None:
    """``torch.optim.Adam(weight_decay=λ)`` is the coupled (L2) variant: OPT-2."""
    hp = AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.5)
    with pytest.raises(AssertionError, match=r"\[OPT-2\]"):
        _run(torch.float32, [(16, 8)], [(1.0, hp), (1.0, hp)], 1, optimizer=torch.optim.Adam)


# -- sampling --------------------------------------------------------------------------------------

N_DRAWS = 2000


def _filtered_probs(logits: torch.Tensor, params: SamplingParams, variant: str = "") -> torch.Tensor:
    """softmax(logits / T) with SMP-11's filters, written with torch ops (sort, topk, cumsum)."""
    t = 1.0 if variant == "temperature_ignored" else params.temperature
    probs = torch.softmax(logits / t, -1).float()
    if params.top_k != -1:
        k = params.top_k + (1 if variant == "top_k_plus_1" else -1 if variant == "top_k_minus_1" else 0)
        cut = torch.zeros_like(probs)
        top = torch.topk(probs, k).indices
        cut[top] = probs[top]
        probs = cut
    if params.top_p < 1.0:
        values, ids = torch.sort(probs / probs.sum(), descending=True, stable=True)
        cumulative = torch.cumsum(values.double(), 0)
        if variant == "top_p_exclusive":  # drops the token that crosses top_p
            n = max(1, int((cumulative < params.top_p).sum()))
        else:
            n = int((cumulative < params.top_p).sum()) + 1
        cut = torch.zeros_like(probs)
        cut[ids[:n]] = probs[ids[:n]]
        probs = cut
    return probs


def _draws(logits: torch.Tensor, params: SamplingParams, seed: int, variant: str = "") -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    probs = _filtered_probs(logits, params, variant)
    return [int(x) for x in torch.multinomial(probs, N_DRAWS, replacement=True, generator=gen)]


@st.composite
def _logits(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    v = draw(st.sampled_from([16, 64, 258, 384]))
    scale = draw(st.floats(1.5, 3.0))
    seed = draw(st.integers(0, 2**16))
    return torch.randn(v, generator=torch.Generator().manual_seed(seed)) * scale, seed


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@given(case=_logits())
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
def test_torch_multinomial_sampling_passes_the_statistical_checks(
    precision: str, case: tuple[torch.Tensor, int]
) -> None:
    """Logits in the working precision; returned logprobs are float32 ``log_softmax`` of them;
    draws are ``torch.multinomial`` over the filtered ``softmax(logits / T)``."""
    logits, seed = case
    logits = logits.to(DTYPES[precision])
    returned = torch.log_softmax(logits.float(), -1).double().numpy()
    for i, check in enumerate(choose_scenarios(returned, precision)):
        check_draws(_draws(logits, check.params, seed + i), returned, check, precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    ("variant", "scenario", "message"),
    [
        ("temperature_ignored", 0, r"\[SMP-10\].*temperature looks ignored"),
        ("top_k_plus_1", 1, r"\[SMP-11\]"),
        ("top_k_minus_1", 1, r"\[SMP-11\]"),
        ("top_p_exclusive", 2, r"\[SMP-11\]"),
    ],
)
@given(case=_logits())
@settings(
    max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.filter_too_much]
)
def test_wrong_sampling_fails_the_statistical_checks(
    precision: str, variant: str, scenario: int, message: str, case: tuple[torch.Tensor, int]
) -> None:
    logits, seed = case
    logits = logits.to(DTYPES[precision])
    returned = torch.log_softmax(logits.float(), -1).double().numpy()
    check = choose_scenarios(returned, precision)[scenario]
    # power needs a cut that tolerance cannot move (false failures never do: see the test above)
    assume(not _membership(returned, _allowance(returned, resolve(precision)), check.params)[1])
    right, wrong = (_filtered_probs(logits, check.params, x) for x in ("", variant))
    assume(0.5 * float((right / right.sum() - wrong / wrong.sum()).abs().sum()) >= 0.05)  # a visible change
    with pytest.raises(AssertionError, match=message):
        check_draws(_draws(logits, check.params, seed, variant), returned, check, precision)


def test_a_draw_check_names_its_statement() -> None:
    returned = torch.log_softmax(torch.tensor([2.0, 1.0, 0.0, -1.0]), -1).double().numpy()
    check = DrawCheck(SamplingParams(temperature=1.0, max_tokens=1, stop=[]), "SMP-10", "uniform draws")
    with pytest.raises(AssertionError, match=r"\[SMP-10\] uniform draws: token 0"):
        check_draws([0, 1, 2, 3] * 500, returned, check, "fp32")


@given(n=st.integers(1, 60), p=st.floats(0.0, 1.0), count=st.integers(0, 60))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_the_chernoff_bound_is_an_upper_bound_of_the_exact_binomial_tail(n: int, p: float, count: int) -> None:
    from tinker_std.conformance.sampling_stats import chernoff_tail

    count = min(count, n)
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    exact = sum(pmf[count:]) if count / n > p else sum(pmf[: count + 1]) if count / n < p else 1.0
    assert chernoff_tail(n, count, p) >= exact - 1e-12
