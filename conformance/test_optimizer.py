"""optim_step: AdamW, clipping, step counter, metrics (spec OPT)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinker_std as ts
from tinker_std.conformance.adamw import AdamState, check_adamw_step
from tinker_std.conformance.helpers import ADAM, forward_logprobs, metric_keys_ok, probe_batch, state_arrays
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.strategies import adam_params, batches, ce_datums, conformance_settings
from tinker_std.conformance.tolerances import assert_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _split(state: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    prefix = f"{kind}/"
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.requires("introspection")
@pytest.mark.spec("OPT-1", "OPT-2", "OPT-3", "OPT-4", "OPT-6", "OPT-7", "FB-5", "TOL-5")
def test_optim_step_is_torch_adamw_after_global_norm_clipping(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    """Each step, read from ``read_state`` before and after, is ``torch.optim.AdamW`` in float64
    after global-norm clipping, within the class's ``atol`` plus the allowance TOL-5 derives from
    the computation (``conformance.adamw``); a mismatch that a known-wrong AdamW explains is
    reported against the statement that variant breaks."""
    v = conformance_backend.vocab_size

    @given(
        steps=st.lists(
            st.tuples(st.one_of(st.none(), batches(ce_datums(v, weights="given"), max_size=2)), adam_params()),
            min_size=1,
            max_size=3,
        )
    )
    @conformance_settings
    def check(steps: list[tuple[list[ts.Datum] | None, ts.AdamParams]]) -> None:
        tc = make_training_client()
        for data, params in steps:
            if data is not None:
                tc.forward_backward(data, "cross_entropy")
            before = AdamState.of(tc.read_state().result())
            response = tc.optim_step(params).result()
            after = AdamState.of(tc.read_state().result())
            metrics = response.metrics or {}
            assert not metric_keys_ok(metrics), f"[OPT-6] bad metric keys {metric_keys_ok(metrics)}"
            check_adamw_step(before, after, params, metrics)

    check()


@pytest.mark.spec("OPT-2", "OPT-3", "OPT-7")
def test_learning_rate_zero_leaves_the_weights_unchanged(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
    tc = training_client()
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM)
    tc.forward_backward(probe, "cross_entropy")
    before = forward_logprobs(tc, probe)
    state = state_arrays(tc) if conformance_backend.supports("introspection") else None
    response = tc.optim_step(ts.AdamParams(learning_rate=0.0, weight_decay=0.5)).result()
    assert (response.metrics or {}).get("step:max") == 2, "[OPT-6] step:max must count the lr=0 step"
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), before, strict=True)):
        assert_replay(x, y, "token", "OPT-3", what=f"probe {i} after an lr=0 step")
    if state is not None:
        after = state_arrays(tc)
        for key, value in _split(state, "weights").items():
            assert_replay(after[f"weights/{key}"], value, "token", "OPT-2", what=f"{key} after an lr=0 step")
        assert int(after["step"]) == int(state["step"]) + 1, "[OPT-7] t must advance with lr=0"


@pytest.mark.spec("OPT-7", "OPT-1", "OPT-6")
def test_a_step_without_gradient_still_counts(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
    tc = training_client()
    before = forward_logprobs(tc, probe)
    first = tc.optim_step(ADAM).result().metrics or {}
    assert first.get("step:max") == 1, f"[OPT-7] step:max after one empty step: {first.get('step:max')}"
    assert first.get("grad_norm:max") == 0.0, f"[OPT-6] grad_norm:max with no gradient: {first.get('grad_norm:max')}"
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), before, strict=True)):
        assert_replay(x, y, "token", "OPT-7", what=f"probe {i}: an empty first step must not move the weights (m = 0)")
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM)
    moved = forward_logprobs(tc, probe)
    third = tc.optim_step(ADAM).result().metrics or {}
    assert third.get("step:max") == 3, f"[OPT-7] step:max after three steps: {third.get('step:max')}"
    after = forward_logprobs(tc, probe)
    assert any(not np.array_equal(x, y) for x, y in zip(after, moved, strict=True)), (
        "[OPT-7] an empty step with m != 0 must still move the weights"
    )


@pytest.mark.spec("OPT-4")
def test_a_clip_norm_above_the_gradient_norm_changes_nothing(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
    plain, clipped, tight = training_client(), training_client(), training_client()
    norms = []
    for tc, clip in ((plain, 0.0), (clipped, 1e9), (tight, 1e-4)):
        tc.forward_backward(probe, "cross_entropy")
        norms.append(tc.optim_step(ts.AdamParams(learning_rate=1e-2, grad_clip_norm=clip)).result().metrics or {})
        tc.forward_backward(probe, "cross_entropy")
        tc.optim_step(ts.AdamParams(learning_rate=1e-2, grad_clip_norm=clip))
    for i, (x, y) in enumerate(zip(forward_logprobs(clipped, probe), forward_logprobs(plain, probe), strict=True)):
        assert_replay(x, y, "token", "OPT-4", what=f"probe {i}: clip norm far above the gradient norm")
    assert norms[0]["grad_norm:max"] == norms[2]["grad_norm:max"] > 1e-4, "[OPT-6] grad_norm:max is before clipping"
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(forward_logprobs(tight, probe), forward_logprobs(plain, probe), strict=True)
    ), "[OPT-4] a tight clip norm must change the second step"


@pytest.mark.spec("OPT-9", "TYP-14")
def test_the_optimizer_is_adamw(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    tc = training_client()
    info = tc.get_info()
    assert info.optimizer_config.type == "adamw", f"[OPT-9] optimizer {info.optimizer_config.type!r}"
    for bad in (0.1, {"learning_rate": -1.0}, "adamw"):
        with pytest.raises(ts.BadRequestError) as err:
            tc.optim_step(bad).result()  # type: ignore[arg-type]
        assert err.value.field == "optim_params", f"[OPT-9] field {err.value.field!r}"
    response = tc.optim_step(adam_params=ts.AdamParams(learning_rate=1e-3)).result()  # the SDK's legacy keyword
    assert (response.metrics or {}).get("step:max") == 1, "[OPT-9] optim_step(adam_params=...) must work"
