"""forward / forward_backward / optim_step interplay and chunking (spec FB-1..FB-9; ordering is test_ordering.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given

import tinker_std as ts
from tinker_std.conformance.helpers import (
    ADAM,
    forward_logprobs,
    logprobs_of,
    probe_batch,
    sequence_datum,
    snapshot,
    state_arrays,
    two_batches,
    with_rl_inputs,
)
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.strategies import batches, ce_datums, conformance_settings, rl_datums
from tinker_std.conformance.tolerances import assert_close, assert_mapping_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


@pytest.mark.spec("FB-1", "TOL-4")
def test_forward_is_pure_and_repeatable(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    v = conformance_backend.vocab_size
    introspection = conformance_backend.supports("introspection")
    probe = probe_batch(v)
    a, b = two_batches(v)
    tc, twin = training_client(), training_client()
    for client in (tc, twin):
        client.forward_backward(a, "cross_entropy")
        client.optim_step(ADAM)
        client.forward_backward(b, "cross_entropy")  # a pending gradient that forward must not touch
    before = snapshot(tc, probe, introspection)
    first = tc.forward(a + b, "cross_entropy").result()
    for _ in range(2):
        again = tc.forward(a + b, "cross_entropy").result()
        for i, (x, y) in enumerate(zip(logprobs_of(again), logprobs_of(first), strict=True)):
            assert_replay(x, y, "token", "TOL-4", what=f"[FB-1] repeated forward, datum {i}")
    for loss_fn in ("importance_sampling", "ppo"):
        tc.forward([with_rl_inputs(d) for d in a], loss_fn).result()
    assert_mapping_close(
        snapshot(tc, probe, introspection), before, "token", "FB-1", what="after forwards", replay=True
    )
    tc.optim_step(ADAM)
    twin.optim_step(ADAM)
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), forward_logprobs(twin, probe), strict=True)):
        assert_replay(x, y, "token", "FB-1", what=f"probe {i}: forwards changed the gradient or optimizer state")


@pytest.mark.spec("ALN-1", "ALN-2")
def test_position_i_is_scored_against_target_i(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """``forward``'s logprob at position ``i`` is ``log p(target_tokens[i] | x[0..i])``: the same
    number the client's snapshot sampler gives for that token after that prefix (SMP-16 makes the
    two paths agree), for the shifted sequence and for targets unrelated to ``x[i + 1]``."""
    v = conformance_backend.vocab_size
    tc = training_client()
    tc.forward_backward(probe_batch(v), "cross_entropy")
    tc.optim_step(ADAM).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    seq = [(29 * i + 11) % v for i in range(7)]
    shifted = forward_logprobs(tc, [sequence_datum(seq)])[0]
    scored = sampler.compute_logprobs(ts.ModelInput.from_ints(seq)).result()
    expected = np.array([np.nan if x is None else x for x in scored[1:]])
    assert_close(shifted, expected, "token", "ALN-1", what="forward(s[:-1] -> s[1:]) vs compute_logprobs(s)[1:]")
    x = seq[:4]
    targets = [(7 * t + 3) % v for t in x]  # not x[i + 1]
    datum = ts.Datum(model_input=ts.ModelInput.from_ints(x), loss_fn_inputs={"target_tokens": targets})
    got = forward_logprobs(tc, [datum])[0]
    for i, target in enumerate(targets):
        last = sampler.compute_logprobs(ts.ModelInput.from_ints([*x[: i + 1], target])).result()[-1]
        assert last is not None
        assert_close(got[i], last, "token", "ALN-1", what=f"position {i} scored against target {target}")


def _refused_with(statement: str, call: Callable[[], Any], error: type[ts.TinkerError], field: str, what: str) -> None:
    """``call()`` (or its future) fails with ``error`` naming ``field``; else fail naming ``statement``."""
    try:
        call().result()
    except ts.TinkerError as exc:
        assert isinstance(exc, error), f"[{statement}] {what}: {type(exc).__name__} ({exc}), expected {error.__name__}"
        got = getattr(exc, "field", None)
        assert got == field, f"[{statement}] {what}: field {got!r}, expected {field!r}"
        return
    raise AssertionError(f"[{statement}] {what} was accepted")


@pytest.mark.spec("ALN-3", "ALN-4", "ALN-5", "FB-8")
def test_malformed_data_is_refused(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    """One explicit case per rule: the request fails with the typed error naming the field."""
    v, c = conformance_backend.vocab_size, conformance_backend.max_context_length
    tc = training_client()
    ok = sequence_datum([1, 2, 3, 4])

    def fb(data: list[ts.Datum], loss_fn: str = "cross_entropy") -> Callable[[], Any]:
        return lambda: tc.forward_backward(data, loss_fn)

    def datum(tokens: list[int], **inputs: Any) -> ts.Datum:
        return ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)

    bad_request = ts.BadRequestError
    _refused_with("FB-8", fb([]), bad_request, "data", "an empty data list")
    _refused_with("ALN-5", fb([ok, datum([], target_tokens=[])]), bad_request, "data[1].model_input", "N = 0")
    long = [1] * (c + 1)
    _refused_with("ALN-5", fb([datum(long, target_tokens=long)]), ts.ContextLengthError, "data[0].model_input", "N > C")
    _refused_with("ALN-4", fb([ok, datum([1, v], target_tokens=[1, 2])]), bad_request, "data[1].model_input", "id V")
    field = "data[0].loss_fn_inputs.target_tokens"
    _refused_with("ALN-4", fb([datum([1, 2], target_tokens=[1, v])]), bad_request, field, "target id V")
    _refused_with("ALN-3", fb([datum([1, 2], target_tokens=[1, 2, 3])]), bad_request, field, "N + 1 targets")
    floats = np.array([1.0, 2.0], np.float32)
    _refused_with("ALN-3", fb([datum([1, 2], target_tokens=floats)]), bad_request, field, "float32 targets")
    weights = "data[0].loss_fn_inputs.weights"
    _refused_with(
        "ALN-3", fb([datum([1, 2], target_tokens=[1, 2], weights=[1.0])]), bad_request, weights, "N - 1 weights"
    )
    rl = {"target_tokens": [1, 2], "advantages": [1.0, 1.0], "logprobs": np.zeros((2, 2), np.float32)}
    field = "data[0].loss_fn_inputs.logprobs"
    _refused_with("ALN-3", fb([datum([1, 2], **rl)], "importance_sampling"), bad_request, field, "(N, 2) logprobs")


@pytest.mark.spec("FB-3")
def test_forward_backward_changes_no_weight_or_optimizer_state(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    a, _ = two_batches(v)
    tc = training_client()
    tc.forward_backward(a, "cross_entropy")
    tc.optim_step(ADAM)
    before_lps = forward_logprobs(tc, probe)
    before = state_arrays(tc) if conformance_backend.supports("introspection") else None
    tc.forward_backward(probe + a, "cross_entropy").result()
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), before_lps, strict=True)):
        assert_replay(x, y, "token", "FB-3", what=f"probe {i} after forward_backward")
    if before is not None:
        after = state_arrays(tc)
        for key, value in before.items():
            if not key.startswith("grads/"):
                assert_replay(after[key], value, "token", "FB-3", what=f"{key} after forward_backward")
        assert any(np.abs(after[k]).max() > 0 for k in after if k.startswith("grads/")), "[FB-3] no gradient"


@pytest.mark.spec("FB-4", "FB-3")
def test_gradients_accumulate_by_summation(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    introspection = conformance_backend.supports("introspection")
    probe = probe_batch(v)

    @given(a=batches(ce_datums(v), max_size=3), b=batches(ce_datums(v), max_size=3))
    @conformance_settings
    def check(a: list[ts.Datum], b: list[ts.Datum]) -> None:
        split, joined = make_training_client(), make_training_client()
        split.forward_backward(a, "cross_entropy")
        split.forward_backward(b, "cross_entropy")
        joined.forward_backward(a + b, "cross_entropy")
        if introspection:
            s, j = state_arrays(split), state_arrays(joined)
            scale = max([1.0] + [float(np.abs(x).max()) for k, x in j.items() if k.startswith("grads/")])
            for key in j:
                if key.startswith("grads/"):
                    assert_close(
                        s[key], j[key], "token", "FB-4", what=f"{key}: fb(A); fb(B) vs fb(A+B)", slack=1e-7 * scale
                    )
        # Adam divides by sqrt(v) + eps: with a small eps, gradients that are exactly zero in exact
        # arithmetic but carry float noise (e.g. fused attention kernels) become full-size updates of
        # random sign. eps = 1e-3 keeps the step a faithful function of the gradient sum being compared.
        params = ts.AdamParams(learning_rate=1e-3, eps=1e-3)
        split.optim_step(params)
        joined.optim_step(params)
        for i, (x, y) in enumerate(zip(forward_logprobs(split, probe), forward_logprobs(joined, probe), strict=True)):
            assert_close(x, y, "token", "FB-4", what=f"probe {i} after the step")

    check()


@pytest.mark.spec("FB-5", "CKPT-2", "CKPT-5")
def test_optim_step_consumes_the_gradient(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    a, _ = two_batches(v)
    tc = training_client()
    tc.forward_backward(a, "cross_entropy")
    tc.optim_step(ts.AdamParams(learning_rate=0.0))
    if conformance_backend.supports("introspection"):
        grads = {k: x for k, x in state_arrays(tc).items() if k.startswith("grads/")}
        for key, g in grads.items():
            assert np.all(g == 0), f"[FB-5] {key} is not zero after optim_step"
    path = tc.save_state("fb5").result().path  # holds m, v, t but no gradient (CKPT-2)
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    for client in (tc, resumed):
        client.optim_step(ADAM)  # no pending gradient on either, if optim_step cleared it
    for i, (x, y) in enumerate(zip(forward_logprobs(tc, probe), forward_logprobs(resumed, probe), strict=True)):
        assert_replay(x, y, "token", "FB-5", what=f"probe {i}: the second step reused the consumed gradient")


@pytest.mark.spec("FB-9", "ORD-11", "FB-7")
@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling"])
def test_chunk_size_one_equals_one_call(
    loss_fn: str,
    conformance_backend: ConformanceBackend,
    training_client: Factory,
    service_factory: Callable[..., ts.ServiceClient],
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    a, b = two_batches(v)
    data = probe + a + b
    if loss_fn != "cross_entropy":
        data = [with_rl_inputs(d) for d in data]
    chunked_service = service_factory(max_chunk_datums=1)
    whole = training_client()
    chunked = chunked_service.create_lora_training_client(base_model=conformance_backend.base_model, rank=4, seed=0)
    chunked_tc = chunked.result()
    # pipelined: a step and a forward submitted right behind the chunked call must wait for all its chunks
    futures: list[ts.APIFuture[Any]] = [
        chunked_tc.forward_backward(data, loss_fn),
        chunked_tc.optim_step(ADAM),
        chunked_tc.forward(probe),
    ]
    results = [f.result() for f in reversed(futures)][::-1]
    out_whole = whole.forward_backward(data, loss_fn).result()
    whole.optim_step(ADAM)
    after_whole = whole.forward(probe).result()
    out_chunked = results[0]
    assert set(out_chunked.metrics) == set(out_whole.metrics), "[FB-9] metric keys depend on chunking"
    assert_close(out_chunked.metrics["loss:sum"], out_whole.metrics["loss:sum"], "sum", "FB-9", what="loss:sum")
    for i, (x, y) in enumerate(zip(logprobs_of(out_chunked), logprobs_of(out_whole), strict=True)):
        assert_close(x, y, "token", "FB-9", what=f"datum {i} chunked vs whole")
    for i, (x, y) in enumerate(zip(logprobs_of(results[2]), logprobs_of(after_whole), strict=True)):
        assert_close(x, y, "token", "ORD-11", what=f"probe {i} after the step: chunked vs whole")


@pytest.mark.spec("LORA-5", "ORD-14", "OPT-1")
def test_clients_on_one_base_model_are_isolated(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    introspection = conformance_backend.supports("introspection")
    probe = probe_batch(v)
    a, b = two_batches(v)
    quiet, busy = training_client(), training_client()
    quiet.forward_backward(a, "cross_entropy")
    quiet.optim_step(ADAM)
    quiet.forward_backward(b, "cross_entropy")  # pending gradient
    before = snapshot(quiet, probe, introspection)
    prompt = ts.ModelInput.from_ints(probe[0].model_input.to_ints())
    base_before = base_sampler.compute_logprobs(prompt).result()
    # interleave a lot of work on `busy` with reads of `quiet`
    futures: list[ts.APIFuture[Any]] = []
    for _ in range(3):
        futures += [busy.forward_backward(a + b, "cross_entropy"), busy.optim_step(ADAM), quiet.forward(probe)]
        futures.append(busy.forward_backward([with_rl_inputs(d) for d in a], "ppo"))
    busy.save_state("isolation").result()
    for f in futures:
        f.result()
    assert_mapping_close(snapshot(quiet, probe, introspection), before, "token", "LORA-5", what="quiet", replay=True)
    assert_replay(
        [np.nan if x is None else x for x in base_sampler.compute_logprobs(prompt).result()][1:],
        [np.nan if x is None else x for x in base_before][1:],
        "token",
        "OPT-1",
        what="base model logprobs after training a client",
    )


@pytest.mark.spec("FB-2", "FB-6")
def test_rl_outputs_have_target_shapes(conformance_backend: ConformanceBackend, make_training_client: Factory) -> None:
    v = conformance_backend.vocab_size
    tc = make_training_client()

    @given(data=batches(rl_datums(v, loss_fn="ppo")))
    @conformance_settings
    def check(data: list[ts.Datum]) -> None:
        out = tc.forward(data, "ppo").result()
        assert len(out.loss_fn_outputs) == len(data)
        for o, d in zip(out.loss_fn_outputs, data, strict=True):
            assert o["logprobs"].resolved_shape == [d.model_input.length], "[FB-2] logprobs shape"
            ce = tc.forward(
                [
                    ts.Datum(
                        model_input=d.model_input, loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"]}
                    )
                ]
            ).result()
            assert_close(
                o["logprobs"].to_numpy(), logprobs_of(ce)[0], "token", "FB-6", what="logprobs do not depend on the loss"
            )

    check()
