"""Futures and per-client submission order, on the backend under test (spec ORD).

Each test checks one ORD statement through the public API only and names it in every assertion.
Requests are built with every optional input given explicitly (``weights``), so a backend that
differs on a default fails the statement of that default, not these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, forward_logprobs, logprobs_of, sequence_datum
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_replay

Factory = Callable[..., ts.TrainingClient]
Lps = list[np.ndarray]

#: How far a step of ``ADAM`` (lr 1e-2) must move some probe logprob for "it moved" to be certain
#: on every tolerance class (far above bf16's per-token tolerance).
MOVED = 0.05


def _datum(tokens: list[int]) -> ts.Datum:
    return sequence_datum(tokens, [1.0] * (len(tokens) - 1))


def _batches(v: int) -> tuple[list[ts.Datum], list[ts.Datum], list[ts.Datum]]:
    a = [_datum([(7 * i + 3) % v for i in range(9)]), _datum([(5 * i + 1) % v for i in range(6)])]
    b = [_datum([(11 * i + 2) % v for i in range(7)])]
    probe = [_datum([(3 * i + 1) % v for i in range(8)]), _datum([(13 * i + 5) % v for i in range(5)])]
    return a, b, probe


def _moved(x: Lps, y: Lps) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(x, y, strict=True))


def _same(got: Lps, want: Lps, statement: str, what: str) -> None:
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        assert_replay(x, y, "token", statement, what=f"{what}, datum {i}")


def _slow_loss(seconds: float) -> Callable[[list[ts.Datum], list[torch.Tensor]], Any]:
    def fn(data: list[ts.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        time.sleep(seconds)
        return -sum(lp.sum() for lp in lps), {}  # type: ignore[return-value]

    return fn


@pytest.mark.spec("ORD-1")
def test_calls_return_at_once(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    _, _, probe = _batches(conformance_backend.vocab_size)
    tc = training_client()
    tc.forward(probe).result()
    start = time.monotonic()
    slow = tc.forward_backward_custom(probe, _slow_loss(1.0))
    calls = [tc.forward(probe), tc.forward_backward(probe, "cross_entropy"), tc.optim_step(ADAM)]
    calls.append(tc.save_state("ord-1"))
    elapsed = time.monotonic() - start
    assert elapsed < 0.5, f"[ORD-1] submitting five calls took {elapsed:.2f}s: a call waited for its request"
    assert not calls[0].done(), "[ORD-1] a request submitted behind a slow one finished first"
    slow.result(timeout=120)
    for future in calls:
        future.result(timeout=120)


@pytest.mark.spec("ORD-2")
def test_each_request_sees_the_earlier_ones_and_no_later_one(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    a, _, probe = _batches(conformance_backend.vocab_size)
    tc, twin = training_client(), training_client()
    initial = forward_logprobs(twin, probe)
    before = tc.forward(probe)
    tc.forward_backward(a, "cross_entropy")
    tc.optim_step(ADAM)
    after = tc.forward(probe)
    after_lps = logprobs_of(after.result(timeout=120))  # awaited first
    before_lps = logprobs_of(before.result(timeout=120))
    _same(before_lps, initial, "ORD-2", "a forward submitted before a step, awaited last")
    assert _moved(after_lps, initial) > MOVED, (
        f"[ORD-2] a forward submitted after forward_backward + optim_step sees the weights from before the step "
        f"(max change {_moved(after_lps, initial):.2e})"
    )
    twin.forward_backward(a, "cross_entropy").result()
    twin.optim_step(ADAM).result()
    _same(after_lps, forward_logprobs(twin, probe), "ORD-2", "pipelined vs awaited one by one")


@pytest.mark.spec("ORD-3")
def test_pipelined_submission_equals_sequential(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    a, b, probe = _batches(conformance_backend.vocab_size)
    plan: list[tuple[str, Any]] = [
        ("fb", a), ("forward", probe), ("step", ADAM), ("forward", probe), ("fb", b), ("fb", a),
        ("step", ts.AdamParams(learning_rate=5e-3, weight_decay=0.0, grad_clip_norm=0.0)), ("forward", probe),
    ]  # fmt: skip

    def submit(tc: ts.TrainingClient, op: str, arg: Any) -> ts.APIFuture[Any]:
        if op == "fb":
            return tc.forward_backward(arg, "cross_entropy")
        if op == "step":
            return tc.optim_step(arg)
        return tc.forward(arg, "cross_entropy")

    sequential, pipelined = training_client(), training_client()
    expected = [submit(sequential, op, arg).result(timeout=120) for op, arg in plan]
    futures = [submit(pipelined, op, arg) for op, arg in plan]
    got = {i: futures[i].result(timeout=120) for i in reversed(range(len(plan)))}
    for i, (op, _) in enumerate(plan):
        if op != "step":
            _same(logprobs_of(got[i]), logprobs_of(expected[i]), "ORD-3", f"request {i} ({op})")


@pytest.mark.spec("ORD-4")
def test_a_failed_request_changes_nothing_and_blocks_nothing(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    a, b, probe = _batches(conformance_backend.vocab_size)
    tc, twin = training_client(), training_client()
    tc.forward_backward(a, "cross_entropy")
    tc.save_state("ord-4", ttl_seconds=None, overwrite=False)
    failing = tc.save_state("ord-4", ttl_seconds=None, overwrite=False)  # exists: fails when it executes
    later = [tc.forward_backward(b, "cross_entropy"), tc.optim_step(ADAM), tc.forward(probe)]
    with pytest.raises(ts.ConflictError):
        failing.result(timeout=120)
    outcomes: list[object] = []
    for future in later:
        try:
            outcomes.append(future.result(timeout=120))
        except ts.TinkerError as exc:
            raise AssertionError(f"[ORD-4] a request after a failed one failed: {type(exc).__name__}: {exc}") from exc
    twin.forward_backward(a, "cross_entropy")
    twin.forward_backward(b, "cross_entropy")
    twin.optim_step(ADAM)
    last = outcomes[-1]
    assert isinstance(last, ts.ForwardBackwardOutput), f"[ORD-4] forward answered {type(last).__name__}"
    _same(logprobs_of(last), forward_logprobs(twin, probe), "ORD-4", "after a failed save")


@pytest.mark.spec("ORD-5")
def test_validation_errors_come_from_the_call(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    a, _, probe = _batches(v)
    tc = training_client()
    bad = ts.Datum(
        model_input=ts.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [1, 2, v], "weights": [1.0, 1.0, 1.0]},  # token id == V (ALN-4)
    )
    calls: dict[str, Callable[[], Any]] = {
        "forward": lambda: tc.forward([bad], "cross_entropy"),
        "forward_backward": lambda: tc.forward_backward([bad], "cross_entropy"),
        "forward_backward (unknown loss)": lambda: tc.forward_backward(a, "no-such-loss"),
        "save_state": lambda: tc.save_state("a/b"),
    }
    for what, call in calls.items():
        try:
            future = call()
        except ts.BadRequestError:
            continue
        try:
            future.result(timeout=120)
        except ts.BadRequestError as exc:
            raise AssertionError(f"[ORD-5] {what}: the validation error came from the future, not the call") from exc
        raise AssertionError(f"[ORD-5] {what}: an invalid request succeeded")
    tc.forward(probe).result(timeout=120)


@pytest.mark.spec("ORD-6")
def test_futures_block_time_out_and_await(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    _, _, probe = _batches(conformance_backend.vocab_size)
    tc = training_client()
    slow = tc.forward_backward_custom(probe, _slow_loss(1.0))
    behind = tc.forward(probe)
    with pytest.raises(TimeoutError):
        behind.result(timeout=0.05)
    slow.result(timeout=120)
    try:
        out = behind.result(timeout=120)
    except BaseException as exc:  # a cancelled request raises CancelledError
        raise AssertionError(f"[ORD-6] a timed-out result() cancelled the request: {type(exc).__name__}") from exc
    assert isinstance(out, ts.ForwardBackwardOutput), f"[ORD-6] result() returned {type(out).__name__}"

    async def awaited() -> tuple[Any, Any]:
        return await tc.forward(probe), await tc.forward(probe).result_async()

    for value in asyncio.run(awaited()):
        assert isinstance(value, ts.ForwardBackwardOutput), f"[ORD-6] awaiting gave {type(value).__name__}"


@pytest.mark.spec("ORD-7", "ORD-8", "ORD-9", "ORD-13")
def test_async_twins(conformance_backend: ConformanceBackend, service: ts.ServiceClient) -> None:
    backend = conformance_backend
    _, _, probe = _batches(backend.vocab_size)

    async def run() -> None:
        tc = await service.create_lora_training_client_async(backend.base_model, rank=4, seed=0)
        assert isinstance(tc, ts.TrainingClient), f"[ORD-8] create_lora_training_client_async gave {tc!r}"
        twins: dict[str, ts.APIFuture[Any]] = {
            "forward_async": await tc.forward_async(probe, "cross_entropy"),
            "forward_backward_async": await tc.forward_backward_async(probe, "cross_entropy"),
            "forward_backward_custom_async": await tc.forward_backward_custom_async(probe, _slow_loss(0.0)),
            "optim_step_async": await tc.optim_step_async(ADAM),
            "save_state_async": await tc.save_state_async("ord-7"),
            "save_weights_for_sampler_async": await tc.save_weights_for_sampler_async("ord-7"),
        }
        for name, future in twins.items():
            assert isinstance(future, ts.APIFuture), f"[ORD-7] {name} resolved to {type(future).__name__}"
            await future
        path = (await twins["save_state_async"]).path
        for name, loaded in {
            "create_training_client_from_state_async": await service.create_training_client_from_state_async(path),
            "create_training_client_from_state_with_optimizer_async": (
                await service.create_training_client_from_state_with_optimizer_async(path)
            ),
        }.items():
            assert isinstance(loaded, ts.TrainingClient), f"[ORD-8] {name} gave {type(loaded).__name__}"
        snapshot_sc = await tc.save_weights_and_get_sampling_client_async()
        assert isinstance(snapshot_sc, ts.SamplingClient), (
            f"[ORD-13] save_weights_and_get_sampling_client_async gave {type(snapshot_sc).__name__}, not the client"
        )
        sc = await service.create_sampling_client_async(base_model=backend.base_model)
        assert isinstance(sc, ts.SamplingClient), f"[ORD-8] create_sampling_client_async gave {type(sc).__name__}"
        prompt = ts.ModelInput.from_ints([1, 2, 3])
        response = await sc.sample_async(prompt, 1, ts.SamplingParams(max_tokens=2, seed=None, stop=None))
        assert isinstance(response, ts.SampleResponse), f"[ORD-9] sample_async gave {type(response).__name__}"
        lps = await sc.compute_logprobs_async(prompt)
        assert isinstance(lps, list) and lps[0] is None, f"[ORD-9] compute_logprobs_async gave {lps!r}"

    asyncio.run(run())
    future = service.create_lora_training_client(backend.base_model, rank=4, seed=0)
    assert isinstance(future, ts.APIFuture), f"[ORD-8] create_lora_training_client returned {type(future).__name__}"
    sc = service.create_sampling_client(base_model=backend.base_model).result()
    pending = sc.sample(ts.ModelInput.from_ints([1]), 1, ts.SamplingParams(max_tokens=1))
    assert isinstance(pending, ts.APIFuture), f"[ORD-9] sample returned {type(pending).__name__}"
    assert isinstance(sc.compute_logprobs(ts.ModelInput.from_ints([1, 2])), ts.APIFuture), "[ORD-9] compute_logprobs"
    caps = service.get_server_capabilities()
    assert isinstance(caps, ts.GetServerCapabilitiesResponse), f"[ORD-9] get_server_capabilities gave {caps!r}"


@pytest.mark.spec("ORD-10")
def test_result_on_the_clients_own_loop_raises(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    _, _, probe = _batches(conformance_backend.vocab_size)
    tc = training_client()
    done = tc.forward(probe)
    done.result(timeout=120)
    seen: list[str] = []

    def blocking(data: list[ts.Datum], lps: list[torch.Tensor]) -> Any:
        try:
            done.result()  # the custom loss runs on the client's event loop
        except RuntimeError:
            seen.append("RuntimeError")
            raise
        seen.append("returned")
        raise ValueError("result() on the client's own loop returned")

    with pytest.raises(ts.RequestFailedError):
        tc.forward_backward_custom(probe, blocking).result(timeout=60)
    assert seen == ["RuntimeError"], f"[ORD-10] result() on the client's own loop: {seen}, expected RuntimeError"


@pytest.mark.spec("ORD-11")
def test_a_custom_loss_holds_one_position(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    a, _, probe = _batches(conformance_backend.vocab_size)
    tc, twin = training_client(), training_client()
    custom = tc.forward_backward_custom(a, _slow_loss(0.2))
    step = tc.optim_step(ADAM)  # submitted while the custom loss's forward phase runs
    custom.result(timeout=120)
    step.result(timeout=120)
    twin.forward_backward_custom(a, _slow_loss(0.0)).result(timeout=120)
    twin.optim_step(ADAM).result(timeout=120)
    got, want = forward_logprobs(tc, probe), forward_logprobs(twin, probe)
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        assert_close(x, y, "token", "ORD-11", what=f"probe {i}: a step submitted during a custom loss vs after it")


@pytest.mark.spec("ORD-13")
def test_a_snapshot_sampler_captures_its_position(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    a, b, _ = _batches(v)
    seq = [(17 * i + 2) % v for i in range(9)]
    tc = training_client()
    tc.forward_backward(a, "cross_entropy")
    tc.optim_step(ADAM)
    at_position = tc.forward([_datum(seq)])
    sampler = tc.save_weights_and_get_sampling_client(name=None)
    tc.forward_backward(b, "cross_entropy")
    tc.optim_step(ADAM)
    moved = tc.forward([_datum(seq)])
    sc = sampler.result(timeout=120)
    assert isinstance(sc, ts.SamplingClient), f"[ORD-13] the future gave {type(sc).__name__}"
    expected = logprobs_of(at_position.result(timeout=120))[0]
    assert _moved(logprobs_of(moved.result(timeout=120)), [expected]) > MOVED, "[ORD-13] later training moved nothing"
    got = sc.compute_logprobs(ts.ModelInput.from_ints(seq)).result(timeout=120)
    assert got[0] is None, f"[ORD-13] compute_logprobs entry 0 is {got[0]!r}"
    assert_close(np.array(got[1:], dtype=np.float64), expected, "token", "ORD-13", what="snapshot vs its position")
