"""All or nothing, finite or refused: a failing call leaves no trace (spec FB-14, FB-15, OPT-10; issue 21).

A ``forward_backward`` whose last chunk fails must leave neither the gradient of its good chunks
nor any other state (FB-14); inputs whose loss overflows are refused with ``NonFiniteError`` and
never reach the adapter or the optimizer (FB-15, OPT-10).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import (
    ADAM,
    forward_logprobs,
    probe_batch,
    sequence_datum,
    snapshot,
    two_batches,
    with_rl_inputs,
)
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_mapping_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _overflowing(v: int) -> ts.Datum:
    """An importance-sampling datum whose ratio ``exp(logprob + 1e4)`` overflows every float type."""
    tokens = [(3 * i + 5) % v for i in range(6)]
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "advantages": [1.0] * 5, "logprobs": [-1e4] * 5},
    )


@pytest.mark.spec("FB-14", "FB-15")
def test_a_call_whose_chunk_fails_leaves_no_gradient(
    conformance_backend: ConformanceBackend, service_factory: Callable[..., ts.ServiceClient]
) -> None:
    v = conformance_backend.vocab_size
    introspection = conformance_backend.supports("introspection")
    probe = probe_batch(v)
    a, b = two_batches(v)
    chunked = service_factory(max_chunk_datums=1)

    def client() -> ts.TrainingClient:
        return chunked.create_lora_training_client(base_model=conformance_backend.base_model, rank=4, seed=0).result()

    tc, twin = client(), client()
    for c in (tc, twin):
        c.forward_backward(a, "cross_entropy").result()  # a pending gradient the failed call must keep
    before = snapshot(tc, probe, introspection)
    # the good datums run first (one chunk each) and accumulate; the last chunk's loss is infinite
    with pytest.raises(ts.NonFiniteError):
        tc.forward_backward([with_rl_inputs(d) for d in a + b] + [_overflowing(v)], "importance_sampling").result()
    assert_mapping_close(
        snapshot(tc, probe, introspection), before, "token", "FB-14", what="state after the failed call", replay=True
    )
    # without introspection the gradient shows in the step: it must be the twin's, which never made the call
    for c in (tc, twin):
        c.optim_step(ADAM).result()
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), forward_logprobs(twin, probe), strict=True)):
        assert_close(x, y, "token", "FB-14", what=f"probe {i} after a step: failed call left a gradient")


@pytest.mark.spec("FB-15", "OPT-10")
def test_overflowing_loss_inputs_are_refused_and_never_poison_the_adapter(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    introspection = conformance_backend.supports("introspection")
    probe = probe_batch(v)
    a, _ = two_batches(v)
    tc = training_client()
    tc.forward_backward(a, "cross_entropy").result()
    before = snapshot(tc, probe, introspection)
    for backward in (False, True):
        call = tc.forward_backward if backward else tc.forward
        with pytest.raises(ts.NonFiniteError):
            call([_overflowing(v)], "importance_sampling").result()
        assert_mapping_close(
            snapshot(tc, probe, introspection),
            before,
            "token",
            "FB-15",
            what=f"refused (backward={backward})",
            replay=True,
        )
    tokens = [(7 * i + 3) % v for i in range(6)]
    for scale in (1e30, 3.4e38):  # finite inputs whose loss or gradient overflows some float types
        huge = sequence_datum(tokens, [scale] * 5)
        before = snapshot(tc, probe, introspection)
        try:
            out = tc.forward_backward([huge], "cross_entropy").result()
        except ts.NonFiniteError:
            assert_mapping_close(
                snapshot(tc, probe, introspection), before, "token", "FB-15", what=f"weights {scale}", replay=True
            )
            continue
        assert np.isfinite(out.metrics["loss:sum"]), f"[FB-15] weights {scale}: loss {out.metrics['loss:sum']}"
        weights_before = forward_logprobs(tc, probe)
        try:
            step = tc.optim_step(ADAM).result()
        except ts.NonFiniteError:
            for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), weights_before, strict=True)):
                assert_replay(x, y, "token", "OPT-10", what=f"probe {i}: a refused step moved the weights")
        else:
            assert all(np.isfinite(m) for m in step.metrics.values()), f"[OPT-10] step metrics {step.metrics}"  # type: ignore[union-attr]
        after = forward_logprobs(tc, probe)
        assert all(np.isfinite(lp).all() for lp in after), f"[OPT-10] weights {scale}: the adapter is poisoned"
        tc.forward_backward(a, "cross_entropy").result()  # still trainable
        tc.optim_step(ADAM).result()
