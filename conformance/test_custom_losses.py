"""Custom losses through ``forward_backward_custom`` (spec FB-10..FB-13)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, forward_logprobs, logprobs_of, probe_batch
from tinker_std.conformance.loss_checks import Factory, assert_same_gradient, trained
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.reference import loss_with_slack, reference_loss
from tinker_std.conformance.strategies import batches, ce_datums, conformance_settings, rl_datums
from tinker_std.conformance.tolerances import assert_close, assert_replay

# -- custom losses ------------------------------------------------------------------------------


def _custom_ce(
    calls: list[Any],
) -> Callable[[list[ts.Datum], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    def fn(data: list[ts.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        calls.append((data, lps))
        loss = reference_loss("cross_entropy", lps, data)
        return loss, {"tokens:sum": float(sum(lp.numel() for lp in lps)), "loss:sum": -1.0}

    return fn


@pytest.mark.spec("FB-10", "FB-11", "FB-12", "ORD-11")
def test_custom_cross_entropy_equals_the_builtin(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size

    @given(data=batches(ce_datums(v, weights="given"), max_size=3))
    @conformance_settings
    def check(data: list[ts.Datum]) -> None:
        builtin, custom = make_training_client(), make_training_client()
        calls: list[Any] = []
        out_b = builtin.forward_backward(data, "cross_entropy").result()
        out_c = custom.forward_backward_custom(data, _custom_ce(calls)).result()
        assert len(calls) == 1, f"[FB-10] loss_fn called {len(calls)} times"
        seen_data, seen_lps = calls[0]
        assert seen_data == data, "[FB-10] loss_fn must receive the original data"
        for lp, d in zip(seen_lps, data, strict=True):
            assert lp.dtype == torch.float32 and lp.requires_grad, "[FB-10] logprobs must be float32 leaves"
            assert list(lp.shape) == d.loss_fn_inputs["target_tokens"].resolved_shape, "[FB-10] logprob shape"
        # the gradient first (FB-11), then the values reported beside it (FB-12)
        assert_same_gradient(custom, builtin, conformance_backend, "FB-11", "custom vs built-in cross-entropy")
        expected, slack = loss_with_slack("cross_entropy", logprobs_of(out_b), data)
        assert_close(out_c.metrics["loss:sum"], expected, "sum", "FB-12", what="custom loss:sum", slack=slack)
        assert_close(
            out_c.metrics["surrogate_loss:sum"],
            out_b.metrics["loss:sum"],
            "sum",
            "FB-12",
            what="surrogate_loss:sum",
            slack=slack,
        )
        assert out_c.metrics.get("tokens:sum") == sum(d.model_input.length for d in data), "[FB-12] user metric lost"
        for i, (a, b) in enumerate(zip(logprobs_of(out_c), logprobs_of(out_b), strict=True)):
            assert_close(a, b, "token", "FB-12", what=f"loss_fn_outputs of datum {i}")

    check()


@pytest.mark.spec("FB-11")
def test_custom_importance_sampling_gradient_equals_the_builtin(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size

    def custom_is(data: list[ts.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return reference_loss("importance_sampling", lps, data), {}

    @given(data=batches(rl_datums(v), max_size=3))
    @conformance_settings
    def check(data: list[ts.Datum]) -> None:
        builtin, custom = make_training_client(), make_training_client()
        builtin.forward_backward(data, "importance_sampling").result()
        custom.forward_backward_custom(data, custom_is).result()
        # the surrogate weights are float32 (FB-11): _assert_same_gradient allows their rounding
        assert_same_gradient(custom, builtin, conformance_backend, "FB-11", "custom vs built-in importance_sampling")

    check()


@pytest.mark.requires("soft_targets")
@pytest.mark.spec("LOSS-12")
def test_custom_loss_accepts_soft_targets(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    tc = training_client()
    tokens = [1, 2, 3]
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": np.array([[1, 2]] * 3)}
    )
    out = tc.forward_backward_custom([datum], lambda d, lps: (-torch.stack([x.sum() for x in lps]).sum(), {})).result()
    shape = out.loss_fn_outputs[0]["logprobs"].resolved_shape
    assert shape == [3, 2], f"[LOSS-12] forward_backward_custom with (N, K) targets: logprobs shape {shape}"


BROKEN_LOSSES: dict[str, Callable[[list[ts.Datum], list[torch.Tensor]], Any]] = {
    "raises": lambda d, lps: (_ for _ in ()).throw(ValueError("boom")),
    "returns a float": lambda d, lps: (1.0, {}),
    "returns a bare tensor": lambda d, lps: sum(lp.sum() for lp in lps),
    "bad metric key": lambda d, lps: (sum(lp.sum() for lp in lps), {"no_colon": 1.0}),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LOSSES))
@pytest.mark.spec("FB-13", "ORD-4", "ERR-5")
def test_a_failing_custom_loss_fails_its_future_only(
    case: str, conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
    tc, twin = trained(training_client, conformance_backend), trained(training_client, conformance_backend)
    bad = tc.forward_backward_custom(probe, BROKEN_LOSSES[case])
    later = tc.forward_backward(probe, "cross_entropy")
    with pytest.raises(ts.RequestFailedError) as info:
        bad.result()
    assert info.value.category == "user", f"[FB-13] category {info.value.category!r}"
    assert info.value.__cause__ is not None, "[FB-13] the original exception must be chained as __cause__"
    if case == "raises":
        assert isinstance(info.value.__cause__, ValueError), "[FB-13] __cause__ is not the raised exception"
    later.result()
    twin.forward_backward(probe, "cross_entropy").result()
    tc.optim_step(ADAM)
    twin.optim_step(ADAM)
    for i, (a, b) in enumerate(zip(forward_logprobs(tc, probe), forward_logprobs(twin, probe), strict=True)):
        assert_replay(a, b, "token", "FB-13", what=f"probe {i}: the failed call must accumulate no gradient")
