"""Checkpoints: paths, save, load, resume, management (spec CKPT, OPT-8)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import (
    ADAM,
    forward_logprobs,
    logprobs_of,
    probe_batch,
    sequence_datum,
    state_arrays,
)
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _train(tc: ts.TrainingClient, v: int, steps: int, offset: int = 0) -> list[ts.ForwardBackwardOutput]:
    outs = []
    for k in range(steps):
        data = [sequence_datum([(3 * i + 5 * (k + offset) + 1) % v for i in range(8)])]
        outs.append(tc.forward_backward(data, "cross_entropy").result())
        tc.optim_step(ts.AdamParams(learning_rate=1e-2, weight_decay=0.01, grad_clip_norm=1.0)).result()
    return outs


def _assert_same_lps(got: list[np.ndarray], want: list[np.ndarray], statement: str, what: str) -> None:
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        assert_replay(x, y, "token", statement, what=f"{what}, probe {i}")


@pytest.mark.spec("CKPT-5", "OPT-8", "TOL-4", "CKPT-2")
def test_resuming_with_optimizer_reproduces_the_run(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 2)
    path = tc.save_state("resume").result().path
    continued = _train(tc, v, 3, offset=2)
    resumed_tc = service.create_training_client_from_state_with_optimizer(path).result()
    resumed = _train(resumed_tc, v, 3, offset=2)
    for k, (a, b) in enumerate(zip(resumed, continued, strict=True)):
        assert_replay(a.metrics["loss:sum"], b.metrics["loss:sum"], "sum", "CKPT-5", what=f"loss:sum of step {k}")
    _assert_same_lps(forward_logprobs(resumed_tc, probe), forward_logprobs(tc, probe), "CKPT-5", "after 3 steps")
    if conformance_backend.supports("introspection"):
        a, b = state_arrays(resumed_tc), state_arrays(tc)
        for key in b:
            assert_replay(a[key], b[key], "token", "CKPT-5", what=key)


@pytest.mark.spec("CKPT-4", "OPT-8", "OPT-1")
def test_loading_without_optimizer_starts_a_fresh_optimizer(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 2)
    saved_lps = forward_logprobs(tc, probe)
    weights_path = tc.save_state("fresh-opt").result().path
    sampler_path = tc.save_weights_for_sampler("fresh-opt").result().path
    for path in (weights_path, sampler_path):
        loaded = service.create_training_client_from_state(path).result()
        _assert_same_lps(forward_logprobs(loaded, probe), saved_lps, "CKPT-4", f"weights loaded from {path}")
        if conformance_backend.supports("introspection"):
            state = state_arrays(loaded)
            assert int(state["step"]) == 0, f"[CKPT-4] t = {int(state['step'])} after from_state"
            for key, value in state.items():
                if key.startswith(("exp_avg/", "exp_avg_sq/", "grads/")):
                    assert np.all(value == 0), f"[CKPT-4] {key} is not zero after from_state"
        # with m = 0 an empty step leaves the weights alone; the original client (m != 0) moves
        response = loaded.optim_step(ADAM).result()
        assert (response.metrics or {}).get("step:max") == 1, "[CKPT-4] the first step after from_state is t = 1"
        _assert_same_lps(forward_logprobs(loaded, probe), saved_lps, "CKPT-4", "after an empty step (fresh m)")
    tc.optim_step(ADAM)
    moved = forward_logprobs(tc, probe)
    assert any(not np.array_equal(x, y) for x, y in zip(moved, saved_lps, strict=True)), "the original did not move"


@pytest.mark.spec("CKPT-1", "CKPT-10", "TYP-15", "CKPT-6", "TYP-14")
def test_checkpoint_paths(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    tc = training_client()
    weights = tc.save_state("paths-1").result().path
    sampler = tc.save_weights_for_sampler("paths.2:x-y_z").result().path
    pw = ts.ParsedCheckpointTinkerPath.from_tinker_path(weights)
    ps = ts.ParsedCheckpointTinkerPath.from_tinker_path(sampler)
    assert weights == f"tinker://{pw.training_run_id}/weights/paths-1", f"[CKPT-1] {weights}"
    assert sampler == f"tinker://{ps.training_run_id}/sampler_weights/paths.2:x-y_z", f"[CKPT-1] {sampler}"
    assert pw.training_run_id == ps.training_run_id, "[CKPT-1] both saves must be under the client's run id"
    assert (pw.checkpoint_type, pw.checkpoint_id) == ("training", "weights/paths-1"), "[TYP-15]"
    assert (ps.checkpoint_type, ps.checkpoint_id) == ("sampler", "sampler_weights/paths.2:x-y_z"), "[TYP-15]"
    loaded = service.create_training_client_from_state(weights).result()
    info = loaded.get_info()
    assert info.lora_rank == 4 and info.model_name == conformance_backend.base_model, f"[CKPT-6] {info}"
    new_path = loaded.save_state("paths-1").result().path
    assert ts.ParsedCheckpointTinkerPath.from_tinker_path(new_path).training_run_id != pw.training_run_id, (
        "[CKPT-10] a client created from a checkpoint needs a new run id"
    )
    other = training_client()
    other_path = other.save_state("paths-1").result().path
    assert other_path != weights, "[CKPT-10] two clients share a run id"


@pytest.mark.spec("CKPT-3", "CKPT-2", "CKPT-9")
def test_overwrite_rules_and_immutability(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 1)
    first_lps = forward_logprobs(tc, probe)
    path = tc.save_state("ow").result().path
    loaded = service.create_training_client_from_state(path).result()
    _train(tc, v, 1, offset=1)
    second_lps = forward_logprobs(tc, probe)
    with pytest.raises(ts.ConflictError):
        tc.save_state("ow").result()
    # the checkpoint never changed (CKPT-2), neither by training nor by the refused save (CKPT-3)
    again = service.create_training_client_from_state(path).result()
    _assert_same_lps(forward_logprobs(again, probe), first_lps, "CKPT-3", "after a refused save")
    assert tc.save_state("ow", overwrite=True).result().path == path
    replaced = service.create_training_client_from_state(path).result()
    _assert_same_lps(forward_logprobs(replaced, probe), second_lps, "CKPT-3", "after overwrite=True")
    # a client loaded before the overwrite keeps its weights (CKPT-9)
    _assert_same_lps(forward_logprobs(loaded, probe), first_lps, "CKPT-9", "loaded client after an overwrite")


@pytest.mark.spec("CKPT-5", "CKPT-6", "CKPT-8", "SMP-15")
def test_load_errors(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    tc = training_client()
    weights = tc.save_state("errors").result().path
    sampler = tc.save_weights_for_sampler("errors").result().path
    with pytest.raises(ts.BadRequestError) as err:
        service.create_training_client_from_state_with_optimizer(sampler).result()
    assert err.value.field == "path", f"[CKPT-5] field {err.value.field!r}"
    with pytest.raises(ts.BadRequestError) as err:
        service.create_training_client_from_state(weights, base_model="no-such/base-model").result()
    assert err.value.field == "base_model", f"[CKPT-6] field {err.value.field!r}"
    run = ts.ParsedCheckpointTinkerPath.from_tinker_path(weights).training_run_id
    missing = [f"tinker://{run}/weights/never-saved", "tinker://no-such-run-0/sampler_weights/x"]
    for path in missing:
        with pytest.raises(ts.NotFoundError):
            service.create_training_client_from_state(path).result()
        with pytest.raises(ts.NotFoundError):
            service.create_sampling_client(model_path=path).result()
    with pytest.raises(ts.NotFoundError):
        service.create_training_client_from_state_with_optimizer(missing[0]).result()
    for bad in (
        "tinker://a/b",
        "s3://run/weights/x",
        f"tinker://{run}/other/x",
        f"tinker://{run}/weights/a/b",
        "tinker://../weights/x",
    ):
        with pytest.raises(ts.BadRequestError) as err:
            service.create_training_client_from_state(bad).result()
        assert err.value.field == "path", f"[CKPT-8] {bad}: field {err.value.field!r}"
        with pytest.raises(ts.BadRequestError) as err:
            service.create_sampling_client(model_path=bad).result()
        assert err.value.field == "model_path", f"[CKPT-8] {bad}: field {err.value.field!r}"


@pytest.mark.spec("SMP-15", "SMP-14", "SMP-16", "CKPT-2")
def test_samplers_from_checkpoints_serve_the_saved_weights(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    tc = training_client()
    _train(tc, v, 2)
    seq = [(13 * i + 4) % v for i in range(10)]
    expected = logprobs_of(tc.forward([sequence_datum(seq)]).result())[0]
    samplers = [
        service.create_sampling_client(model_path=tc.save_weights_for_sampler("smp").result().path).result(),
        service.create_sampling_client(model_path=tc.save_state("smp").result().path).result(),
        tc.create_sampling_client(tc.save_weights_for_sampler("smp2").result().path).result(),
    ]
    _train(tc, v, 1, offset=5)  # the samplers must not follow
    for sc in samplers:
        got = sc.compute_logprobs(ts.ModelInput.from_ints(seq)).result()
        assert got[0] is None, "[SMP-16] entry 0 must be None"
        assert_close(np.array(got[1:], dtype=np.float64), expected, "token", "SMP-16", what="sampler from checkpoint")


@pytest.mark.spec("CKPT-7")
def test_a_checkpoint_loads_in_a_new_service_client(
    conformance_backend: ConformanceBackend,
    training_client: Factory,
    service_factory: Callable[..., ts.ServiceClient],
) -> None:
    if not conformance_backend.accepts_checkpoint_dir:
        pytest.skip(f"backend {conformance_backend.name} takes no checkpoint_dir option")
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 1)
    path = tc.save_state("elsewhere").result().path
    other = service_factory()
    loaded = other.create_training_client_from_state_with_optimizer(path).result()
    _assert_same_lps(forward_logprobs(loaded, probe), forward_logprobs(tc, probe), "CKPT-7", "loaded elsewhere")


@pytest.mark.requires("checkpoint_management")
@pytest.mark.spec("CKPT-11", "CKPT-12", "CKPT-13")
def test_listing_and_deleting_checkpoints(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    rest = service.create_rest_client()
    tc = training_client()
    first = tc.save_state("list-a", ttl_seconds=1).result().path
    tc.save_weights_and_get_sampling_client("ignored-name").result()  # writes no checkpoint (CKPT-12)
    second = tc.save_weights_for_sampler("list-b", ttl_seconds=1).result().path
    run = ts.ParsedCheckpointTinkerPath.from_tinker_path(first).training_run_id
    listed = rest.list_checkpoints(run).result()
    assert [c.tinker_path for c in listed] == [first, second], f"[CKPT-11] listing {[c.tinker_path for c in listed]}"
    assert [c.checkpoint_type for c in listed] == ["training", "sampler"], "[CKPT-11] checkpoint types"
    runs = rest.list_training_runs().result()
    assert run in {r.training_run_id for r in runs}, "[CKPT-11] the run is not listed"
    time.sleep(1.2)  # past the ttl: v0.1 checkpoints never expire (CKPT-13)
    service.create_training_client_from_state(first).result()
    rest.delete_checkpoint_from_tinker_path(first).result()
    assert [c.tinker_path for c in rest.list_checkpoints(run).result()] == [second], "[CKPT-11] delete"
    with pytest.raises(ts.NotFoundError):
        rest.delete_checkpoint_from_tinker_path(first).result()
    with pytest.raises(ts.NotFoundError):
        service.create_training_client_from_state(first).result()


# -- checkpoints you can trust (issue 21; CKPT-14, CKPT-16, CKPT-17) -------------------------------


@pytest.mark.spec("CKPT-14", "CKPT-16")
def test_a_damaged_checkpoint_is_refused_as_corrupt(
    conformance_backend: ConformanceBackend,
    training_client: Factory,
    service: ts.ServiceClient,
    _conformance_options: dict[str, object],
) -> None:
    root = _conformance_options.get("checkpoint_dir")
    if not conformance_backend.accepts_checkpoint_dir or root is None:
        pytest.skip(f"not applicable: backend {conformance_backend.name} takes no checkpoint_dir option")
    from pathlib import Path

    tc = training_client()
    _train(tc, conformance_backend.vocab_size, 1)
    path = tc.save_state("to-damage").result().path
    parsed = ts.ParsedCheckpointTinkerPath.from_tinker_path(path)
    folder = (Path(str(root)) / parsed.training_run_id / parsed.checkpoint_id).resolve()
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "checkpoint.json")
    assert files, f"[CKPT-14] no checkpoint files under the checkpoint_dir for {path}"
    biggest = max(files, key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # truncated, as by a crash
    with pytest.raises(ts.CorruptCheckpointError) as info:
        service.create_training_client_from_state_with_optimizer(path).result()
    assert info.value.path == path, f"[CKPT-14] error names {info.value.path!r}, not {path}"
    assert str(root) not in str(info.value), f"[CKPT-16] the error reveals a file-system path: {info.value}"


@pytest.mark.spec("CKPT-17", "CKPT-16")
def test_checkpoint_names_are_bounded(
    conformance_backend: ConformanceBackend, training_client: Factory, _conformance_options: dict[str, object]
) -> None:
    tc = training_client()
    for bad in ("n" * 5000, "n" * 201, "a/b", ".hidden"):
        with pytest.raises(ts.BadRequestError) as info:
            tc.save_state(bad)
        assert info.value.field == "name", f"[CKPT-17] {bad[:12]!r}: field {info.value.field!r}"
        root = _conformance_options.get("checkpoint_dir")
        assert root is None or str(root) not in str(info.value), f"[CKPT-16] path revealed: {info.value}"
    tc.save_weights_for_sampler("n" * 200).result()
