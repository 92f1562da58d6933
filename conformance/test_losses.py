"""Loss functions: values, shapes, reductions, defaults, gradients, validation (spec LOSS, FB-2, FB-6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinker_std as ts
from tinker_std.conformance.helpers import (
    forward_logprobs,
    logprobs_of,
    metric_keys_ok,
    probe_batch,
)
from tinker_std.conformance.loss_checks import (
    LOSS_STATEMENT,
    LOSSES,
    SPEC_DEFAULTS,
    Factory,
    assert_same_gradient,
    grads,
    ratio_probe,
    scaled,
    trained,
)
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.reference import loss_with_slack, reference_loss
from tinker_std.conformance.strategies import (
    batches,
    ce_datums,
    conformance_settings,
    loss_configs,
    loss_datums,
    soft_target_datums,
)
from tinker_std.conformance.tolerances import assert_close, assert_replay


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.spec("FB-1", "FB-2", "FB-7", "LOSS-1", "LOSS-11", "ALN-1", "ALN-2", "TOL-3", "TYP-8")
def test_loss_sum_is_the_formula_of_the_returned_logprobs(
    loss_fn: str, conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = trained(make_training_client, conformance_backend)

    @given(data=batches(loss_datums(loss_fn, v)), config=loss_configs(loss_fn))
    @conformance_settings
    def check(data: list[ts.Datum], config: dict[str, float] | None) -> None:
        out = tc.forward(data, loss_fn, config).result()
        out_fb = tc.forward_backward(data, loss_fn, config).result()
        assert len(out.loss_fn_outputs) == len(data), "[FB-2] one output per datum"
        for i, (o, d) in enumerate(zip(out.loss_fn_outputs, data, strict=True)):
            lp = o["logprobs"]
            assert lp.dtype == "float32", f"[FB-2] datum {i}: logprobs dtype {lp.dtype}"
            assert lp.resolved_shape == d.loss_fn_inputs["target_tokens"].resolved_shape, f"[FB-2] datum {i} shape"
            values = lp.to_numpy()
            assert np.all(np.isfinite(values)) and np.all(values <= 1e-6), f"[FB-2] datum {i}: logprobs {values}"
        for metrics in (out.metrics, out_fb.metrics):
            assert "loss:sum" in metrics, "[FB-7] loss:sum missing"
            assert not metric_keys_ok(metrics), f"[FB-7] bad metric keys {metric_keys_ok(metrics)}"
        expected, slack = loss_with_slack(loss_fn, logprobs_of(out), data, config)
        _assert_loss_sum(out.metrics["loss:sum"], expected, slack, data, loss_fn)
        # forward returns what forward_backward returns at the same position (weights did not move)
        for i, (a, b) in enumerate(zip(logprobs_of(out_fb), logprobs_of(out), strict=True)):
            assert_replay(a, b, "token", "FB-1", what=f"forward vs forward_backward logprobs, datum {i}")
        assert_replay(out_fb.metrics["loss:sum"], out.metrics["loss:sum"], "sum", "FB-1", what="loss:sum")

    check()


def _assert_loss_sum(actual: float, expected: float, slack: float, data: list[ts.Datum], loss_fn: str) -> None:
    """``loss:sum`` equals the loss formula of the returned logprobs (FB-2 and the loss's own
    statement); a value that is the formula divided by the number of target positions or of datums
    is reported as the reduction bug it is (LOSS-1)."""
    statement = LOSS_STATEMENT[loss_fn][0]
    try:
        assert_close(actual, expected, "sum", statement, what=f"[FB-2] {loss_fn} loss:sum vs its formula", slack=slack)
    except AssertionError:
        positions = sum(int(np.prod(d.loss_fn_inputs["target_tokens"].resolved_shape)) for d in data)
        for count, what in ((positions, "target positions"), (len(data), "datums")):
            if count > 1 and abs(actual - expected / count) <= 1e-4 + 1e-4 * abs(expected / count) + slack:
                raise AssertionError(
                    f"[LOSS-1] {loss_fn} loss:sum {actual!r} is the formula {expected!r} divided by the "
                    f"{count} {what}: a mean, not a sum"
                ) from None
        raise


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.spec("FB-6", "LOSS-1")
def test_a_duplicated_datum_doubles_its_contribution(
    loss_fn: str, conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = trained(make_training_client, conformance_backend)

    @given(data=batches(loss_datums(loss_fn, v), max_size=3))
    @conformance_settings
    def check(data: list[ts.Datum]) -> None:
        once = tc.forward(data, loss_fn).result()
        twice = tc.forward(data + data, loss_fn).result()
        assert_close(twice.metrics["loss:sum"], 2 * once.metrics["loss:sum"], "sum", "FB-6", what="loss:sum of A+A")
        lps_once, lps_twice = logprobs_of(once), logprobs_of(twice)
        for i, lp in enumerate(lps_once):
            assert_close(lps_twice[i], lp, "token", "FB-6", what=f"datum {i}, first copy")
            assert_close(lps_twice[i + len(data)], lp, "token", "FB-6", what=f"datum {i}, second copy")

    check()


@pytest.mark.spec("FB-6", "FB-3", "LOSS-1")
def test_a_duplicated_datum_doubles_its_gradient(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """``forward_backward(A + A)`` leaves the gradient of ``forward_backward(A with weights 2w)``."""
    data = probe_batch(conformance_backend.vocab_size)[:2]
    twice, doubled = trained(training_client, conformance_backend), trained(training_client, conformance_backend)
    twice.forward_backward(data + data, "cross_entropy").result()
    doubled.forward_backward(scaled(data, 2.0), "cross_entropy").result()
    if conformance_backend.supports("introspection"):
        assert any(np.abs(g).max() > 0 for g in grads(twice).values()), "[FB-3] forward_backward produced no gradient"
    assert_same_gradient(twice, doubled, conformance_backend, "FB-6", "A+A vs A with weights 2w")


@pytest.mark.spec("FB-6")
def test_a_datums_outputs_do_not_depend_on_the_rest_of_the_batch(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = trained(make_training_client, conformance_backend)

    @given(
        datum=ce_datums(v),
        others=st.lists(ce_datums(v), min_size=1, max_size=3),
        position=st.integers(0, 3),
    )
    @conformance_settings
    def check(datum: ts.Datum, others: list[ts.Datum], position: int) -> None:
        alone = forward_logprobs(tc, [datum])[0]
        k = min(position, len(others))
        batch = [*others[:k], datum, *others[k:]]
        together = forward_logprobs(tc, batch)
        assert_close(together[k], alone, "token", "FB-6", what=f"datum at index {k} of {len(batch)}")
        reversed_out = forward_logprobs(tc, batch[::-1])
        for i, lp in enumerate(together):
            assert_close(reversed_out[len(batch) - 1 - i], lp, "token", "FB-6", what=f"datum {i} in reversed order")

    check()


@pytest.mark.spec("ALN-2")
def test_a_positions_logprob_ignores_later_tokens(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = trained(make_training_client, conformance_backend)

    @given(datum=ce_datums(v, weights="none"), cut=st.integers(1, 12), data=st.data())
    @conformance_settings
    def check(datum: ts.Datum, cut: int, data: st.DataObject) -> None:
        tokens = datum.model_input.to_ints()
        targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
        k = min(cut, len(tokens))
        tail = data.draw(st.lists(st.integers(0, v - 1), min_size=len(tokens) - k, max_size=len(tokens) - k))
        changed = ts.Datum(
            model_input=ts.ModelInput.from_ints(tokens[:k] + tail), loss_fn_inputs={"target_tokens": targets}
        )
        prefix = ts.Datum(
            model_input=ts.ModelInput.from_ints(tokens[:k]), loss_fn_inputs={"target_tokens": targets[:k]}
        )
        full, other, short = forward_logprobs(tc, [datum, changed, prefix])
        assert_close(other[:k], full[:k], "token", "ALN-2", what=f"first {k} positions after changing later tokens")
        assert_close(short, full[:k], "token", "ALN-2", what=f"first {k} positions of the truncated datum")

    check()


def _zero_datums(loss_fn: str, tc: ts.TrainingClient, backend: ConformanceBackend) -> list[ts.Datum]:
    """Datums whose weights (cross-entropy) or advantages (the others) are all zero."""
    probe = probe_batch(backend.vocab_size)
    if loss_fn == "cross_entropy":
        return [
            ts.Datum(
                model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, "weights": [0.0] * d.model_input.length}
            )
            for d in probe
        ]
    current = forward_logprobs(tc, probe)
    out = []
    for d, lp in zip(probe, current, strict=True):
        n = d.model_input.length
        # q = the current logprobs: dro's penalty term then has (near) zero gradient too (see report)
        q = lp.tolist() if loss_fn == "dro" else [-1.5] * n
        out.append(
            ts.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "advantages": [0.0] * n,
                    "logprobs": q,
                },
            )
        )
    return out


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.spec("LOSS-14", "FB-3")
def test_zero_weights_or_advantages_give_no_gradient(
    loss_fn: str, conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    tc = trained(training_client, conformance_backend)
    probe = probe_batch(conformance_backend.vocab_size)
    data = _zero_datums(loss_fn, tc, conformance_backend)
    before = forward_logprobs(tc, probe)
    tc.forward_backward(data, loss_fn).result()
    if conformance_backend.supports("introspection"):
        for key, g in grads(tc).items():
            assert_close(g, np.zeros_like(g), "token", "LOSS-14", what=f"{key} after a zero-{loss_fn} batch")
    # an AdamW step with a zero gradient and fresh moments... the moments are not fresh here (one step
    # already taken), so step on a client with lr > 0 and compare with a twin that had no batch at all
    twin = trained(training_client, conformance_backend)
    params = ts.AdamParams(learning_rate=1e-2, eps=1.0 if loss_fn == "dro" else 1e-12)
    tc.optim_step(params).result()
    twin.optim_step(params).result()
    after, twin_after = forward_logprobs(tc, probe), forward_logprobs(twin, probe)
    for i, (a, b) in enumerate(zip(after, twin_after, strict=True)):
        if loss_fn == "dro":
            assert_close(a, b, "token", "LOSS-14", what=f"probe {i}: step after a zero-advantage dro batch")
        else:
            assert_replay(a, b, "token", "LOSS-14", what=f"probe {i}: step after a zero-{loss_fn} batch vs none")
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "the step did not move weights"


@pytest.mark.spec("LOSS-8", "LOSS-10", "LOSS-11", "LOSS-13")
def test_malformed_loss_requests_are_refused(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    """One explicit case per rule: the request fails with ``BadRequestError`` naming the field."""
    tc = training_client()
    ce = ts.Datum(model_input=ts.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3]})
    rl = {"target_tokens": [2, 3], "advantages": [1.0, -1.0], "logprobs": [-1.0, -2.0]}

    def refused(statement: str, data: list[ts.Datum], loss_fn: str, config: Any, field: str, what: str) -> None:
        try:
            tc.forward_backward(data, loss_fn, config).result()
        except ts.TinkerError as exc:
            assert isinstance(exc, ts.BadRequestError), f"[{statement}] {what}: {type(exc).__name__} ({exc})"
            assert exc.field == field, f"[{statement}] {what}: field {exc.field!r}, expected {field!r}"
            return
        raise AssertionError(f"[{statement}] {what} was accepted")

    def with_inputs(**inputs: Any) -> list[ts.Datum]:
        return [ts.Datum(model_input=ce.model_input, loss_fn_inputs=inputs)]

    for name in ("mse", "stable_reinforce_x", "CROSS_ENTROPY"):
        refused("LOSS-8", [ce], name, None, "loss_fn", f"loss_fn {name!r}")
    missing = {k: v for k, v in rl.items() if k != "advantages"}
    field = "data[0].loss_fn_inputs.advantages"
    refused("LOSS-10", with_inputs(**missing), "importance_sampling", None, field, "missing advantages")
    extra = {"target_tokens": [2, 3], "advantages": [1.0, 1.0]}
    refused("LOSS-10", with_inputs(**extra), "cross_entropy", None, field, "advantages given to cross_entropy")
    refused("LOSS-11", [ce], "cross_entropy", {"beta": 0.1}, "loss_fn_config.beta", "a config key cross_entropy lacks")
    bad_value = {"clip_low_threshold": float("nan")}
    datums = with_inputs(**rl)
    refused("LOSS-11", datums, "ppo", bad_value, "loss_fn_config.clip_low_threshold", "a NaN config value")
    field = "data[0].loss_fn_inputs.weights"
    refused(
        "LOSS-13",
        with_inputs(target_tokens=[2, 3], weights=[1.0, float("nan")]),
        "cross_entropy",
        None,
        field,
        "NaN weight",
    )
    infinite = {**rl, "advantages": [float("inf"), 1.0]}
    field = "data[0].loss_fn_inputs.advantages"
    refused("LOSS-13", with_inputs(**infinite), "importance_sampling", None, field, "infinite advantage")


@pytest.mark.parametrize("loss_fn", [p for p in LOSSES if p.id in SPEC_DEFAULTS])
@pytest.mark.spec("LOSS-11")
def test_config_defaults(loss_fn: str, conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    """Without ``loss_fn_config`` a loss uses the defaults of the table; a partial config takes the
    defaults for the keys it leaves out (LOSS-11). The ratios straddle every default bound."""
    tc = trained(training_client, conformance_backend)
    statement = LOSS_STATEMENT[loss_fn][0]
    data = ratio_probe(tc, loss_fn, conformance_backend.vocab_size, 100.0 if loss_fn == "gspo" else 2.0)
    defaults = SPEC_DEFAULTS[loss_fn]
    out = tc.forward(data, loss_fn).result()  # no config: the defaults are what is under test
    expected, slack = loss_with_slack(loss_fn, logprobs_of(out), data, defaults)
    assert_close(
        out.metrics["loss:sum"], expected, "sum", statement, what=f"{loss_fn} default config {defaults}", slack=slack
    )
    first = next(iter(defaults))
    partial = {first: 0.5 * defaults[first] + 0.25}
    out = tc.forward(data, loss_fn, partial).result()
    expected, slack = loss_with_slack(loss_fn, logprobs_of(out), data, {**defaults, **partial})
    assert_close(out.metrics["loss:sum"], expected, "sum", "LOSS-11", what=f"partial config {partial}", slack=slack)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.spec("LOSS-14", "FB-3", "FB-11")
def test_gradient_is_the_gradient_of_the_formula(
    loss_fn: str, conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """A built-in loss's gradient equals autograd's gradient of the spec formula (with ``sg`` terms
    constant), applied through ``forward_backward_custom`` (FB-11): compared directly with
    ``introspection`` and through one ``GRADIENT_STEP``."""
    v = conformance_backend.vocab_size
    builtin, custom = trained(training_client, conformance_backend), trained(training_client, conformance_backend)
    if loss_fn == "cross_entropy":
        rng = np.random.default_rng(1)
        data = [
            ts.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    **d.loss_fn_inputs,
                    "weights": rng.uniform(-1, 2, d.model_input.length).astype(np.float32),
                },
            )
            for d in probe_batch(v)
        ]
    else:
        data = ratio_probe(builtin, loss_fn, v, 1.0)
    config = {"ppo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}}.get(loss_fn)

    def formula(d: list[ts.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return reference_loss(loss_fn, lps, d, config), {}

    builtin.forward_backward(data, loss_fn, config).result()
    custom.forward_backward_custom(data, formula).result()
    assert_same_gradient(builtin, custom, conformance_backend, "LOSS-14", f"{loss_fn} gradient vs its formula's")


@pytest.mark.requires("soft_targets")
@pytest.mark.spec("LOSS-12")
def test_soft_targets(conformance_backend: ConformanceBackend, make_training_client: Factory) -> None:
    v = conformance_backend.vocab_size
    tc = trained(make_training_client, conformance_backend)

    @given(data=batches(soft_target_datums(v), max_size=3), plain=ce_datums(v))
    @conformance_settings
    def check(data: list[ts.Datum], plain: ts.Datum) -> None:
        out = tc.forward(data, "cross_entropy").result()
        for i, (o, d) in enumerate(zip(out.loss_fn_outputs, data, strict=True)):
            assert o["logprobs"].resolved_shape == d.loss_fn_inputs["target_tokens"].resolved_shape, f"[LOSS-12] {i}"
        expected, slack = loss_with_slack("cross_entropy", logprobs_of(out), data)
        assert_close(out.metrics["loss:sum"], expected, "sum", "LOSS-12", what="(N, K) loss:sum", slack=slack)
        # column k holds log p(target_tokens[i, k] | x[0..i]): what the (N,) datum of that column gets
        columns = [
            ts.Datum(
                model_input=d.model_input,
                loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"].to_numpy()[:, k]},
            )
            for d in data
            for k in range(d.loss_fn_inputs["target_tokens"].resolved_shape[1])
        ]
        flat = iter(forward_logprobs(tc, columns))
        for i, lp in enumerate(logprobs_of(out)):
            for k in range(lp.shape[1]):
                assert_close(lp[:, k], next(flat), "token", "LOSS-12", what=f"datum {i} column {k} vs its (N,) datum")
        # K = 1 equals plain (N,) cross-entropy
        n = plain.model_input.length
        column = {"target_tokens": plain.loss_fn_inputs["target_tokens"].to_numpy().reshape(n, 1)}
        if "weights" in plain.loss_fn_inputs:
            column["weights"] = plain.loss_fn_inputs["weights"].to_numpy().reshape(n, 1)
        k1 = ts.Datum(model_input=plain.model_input, loss_fn_inputs=column)
        out_plain, out_k1 = tc.forward([plain], "cross_entropy").result(), tc.forward([k1], "cross_entropy").result()
        assert_close(logprobs_of(out_k1)[0].reshape(n), logprobs_of(out_plain)[0], "token", "LOSS-12", what="K=1")
        assert_close(out_k1.metrics["loss:sum"], out_plain.metrics["loss:sum"], "sum", "LOSS-12", what="K=1 loss")

    check()
    # and one fixed datum with three distinct columns, whatever Hypothesis drew
    tokens = [(11 * i + 4) % v for i in range(5)]
    targets = np.array([[(t + 1) % v, (t + 7) % v, (3 * t + 2) % v] for t in tokens], np.int64)
    soft = ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": targets})
    lp = logprobs_of(tc.forward([soft], "cross_entropy").result())[0]
    for k in range(3):
        column = ts.Datum(model_input=soft.model_input, loss_fn_inputs={"target_tokens": targets[:, k]})
        assert_close(lp[:, k], forward_logprobs(tc, [column])[0], "token", "LOSS-12", what=f"fixed datum, column {k}")


@pytest.mark.spec("FB-7", "TYP-8")
@pytest.mark.parametrize("loss_fn", LOSSES)
def test_metric_keys_are_name_colon_reduction(
    loss_fn: str, conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    tc = training_client()
    data = [_rl_version(d) if loss_fn != "cross_entropy" else d for d in probe_batch(conformance_backend.vocab_size)]
    for out in (tc.forward(data, loss_fn).result(), tc.forward_backward(data, loss_fn).result()):
        assert "loss:sum" in out.metrics, "[FB-7] loss:sum missing"
        assert not metric_keys_ok(out.metrics), f"[FB-7] bad metric keys {metric_keys_ok(out.metrics)}"
        assert not hasattr(out, "loss"), "[TYP-8] ForwardBackwardOutput must not have a `loss` attribute"
        for key, value in out.metrics.items():
            assert isinstance(value, float), f"[FB-7] metric {key} is {type(value).__name__}"


def _rl_version(d: ts.Datum) -> ts.Datum:
    n = d.model_input.length
    advantages = [(-1.0) ** i * 0.5 for i in range(n)]
    return ts.Datum(
        model_input=d.model_input,
        loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "advantages": advantages,
            "logprobs": [-2.0] * n,
        },
    )


@pytest.mark.parametrize("loss_fn", [p for p in LOSSES if p.id in ("ppo", "cispo", "gspo")])
@pytest.mark.spec("LOSS-9")
def test_per_position_clip_bounds_override_the_config(
    loss_fn: str, conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    tc = trained(training_client, conformance_backend)
    base = [_rl_version(d) for d in probe_batch(conformance_backend.vocab_size)]
    lo, hi = 0.95, 1.02
    with_tensors = [
        ts.Datum(
            model_input=d.model_input,
            loss_fn_inputs={
                **d.loss_fn_inputs,
                "clip_low_threshold": [lo] * d.model_input.length,
                "clip_high_threshold": [hi] * d.model_input.length,
            },
        )
        for d in base
    ]
    by_config = tc.forward(base, loss_fn, {"clip_low_threshold": lo, "clip_high_threshold": hi}).result()
    by_tensor = tc.forward(with_tensors, loss_fn, {"clip_low_threshold": 0.1, "clip_high_threshold": 9.0}).result()
    assert_close(by_tensor.metrics["loss:sum"], by_config.metrics["loss:sum"], "sum", "LOSS-9", what="tensor vs config")
    expected, slack = loss_with_slack(loss_fn, logprobs_of(by_tensor), with_tensors)
    assert_close(by_tensor.metrics["loss:sum"], expected, "sum", "LOSS-9", what="formula with tensors", slack=slack)


@pytest.mark.spec("LOSS-15", "FB-3")
def test_cross_entropy_gradient_is_linear_in_real_weights(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """Arbitrary real weights, negative and above 1 included: the gradient of weights ``2w`` is
    that of ``w`` listed twice, and ``w`` plus ``-w`` cancel to no gradient at all."""
    probe = probe_batch(conformance_backend.vocab_size)
    rng = np.random.default_rng(0)
    weighted = [
        ts.Datum(
            model_input=d.model_input,
            loss_fn_inputs={
                **d.loss_fn_inputs,
                "weights": rng.uniform(-2.0, 3.0, d.model_input.length).astype(np.float32),
            },
        )
        for d in probe
    ]
    doubled, twice = trained(training_client, conformance_backend), trained(training_client, conformance_backend)
    doubled.forward_backward(scaled(weighted, 2.0), "cross_entropy").result()
    twice.forward_backward(weighted + weighted, "cross_entropy").result()
    assert_same_gradient(doubled, twice, conformance_backend, "LOSS-15", "weights 2w vs w twice")
    cancelled, untouched = (
        trained(training_client, conformance_backend),
        trained(training_client, conformance_backend),
    )
    cancelled.forward_backward(weighted + scaled(weighted, -1.0), "cross_entropy").result()
    assert_same_gradient(cancelled, untouched, conformance_backend, "LOSS-15", "weights w and -w vs no batch")
