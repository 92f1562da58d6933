"""Checkpoints: paths, save, load, resume, management (spec CKPT, OPT-8)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

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
E = TypeVar("E", bound=ts.TinkerError)


def _expect_error(error: type[E], statement: str, what: str, call: Callable[[], Any], field: str | None = None) -> E:
    """Make ``call`` (resolving a returned future); it must raise ``error`` (with ``field``)."""
    try:
        result = call()
        if isinstance(result, ts.APIFuture):
            result.result(timeout=120)
    except ts.TinkerError as exc:
        if not isinstance(exc, error):
            raise AssertionError(
                f"[{statement}] {what}: expected {error.__name__}, got {type(exc).__name__}: {exc}"
            ) from exc
        if field is not None:
            got = getattr(exc, "field", None)
            assert got == field, f"[{statement}] {what}: field {got!r}, expected {field!r}"
        return exc
    raise AssertionError(f"[{statement}] {what}: expected {error.__name__}, the call succeeded")


def _load(statement: str, what: str, call: Callable[[], ts.APIFuture[ts.TrainingClient]]) -> ts.TrainingClient:
    """A client loaded by ``call``; a load that fails is a failure of ``statement``."""
    try:
        return call().result(timeout=120)
    except ts.TinkerError as exc:
        raise AssertionError(f"[{statement}] {what}: the load failed: {type(exc).__name__}: {exc}") from exc


def _train(tc: ts.TrainingClient, v: int, steps: int, offset: int = 0) -> list[ts.ForwardBackwardOutput]:
    outs = []
    for k in range(steps):
        data = [sequence_datum([(3 * i + 5 * (k + offset) + 1) % v for i in range(8)], [1.0] * 7)]
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
    resumed_tc = _load("CKPT-5", path, partial(service.create_training_client_from_state_with_optimizer, path))
    resumed = _train(resumed_tc, v, 3, offset=2)
    for k, (a, b) in enumerate(zip(resumed, continued, strict=True)):
        assert_replay(a.metrics["loss:sum"], b.metrics["loss:sum"], "sum", "CKPT-5", what=f"loss:sum of step {k}")
    _assert_same_lps(forward_logprobs(resumed_tc, probe), forward_logprobs(tc, probe), "CKPT-5", "after 3 steps")
    if conformance_backend.supports("introspection"):
        got, want = state_arrays(resumed_tc), state_arrays(tc)
        for key in want:
            assert_replay(got[key], want[key], "token", "CKPT-5", what=key)


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
    new_path = loaded.save_state("paths-3").result().path
    assert ts.ParsedCheckpointTinkerPath.from_tinker_path(new_path).training_run_id != pw.training_run_id, (
        f"[CKPT-10] a client created from a checkpoint saves under the source's run id: {new_path}"
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
    _expect_error(ts.ConflictError, "CKPT-3", "save_state to an existing path", lambda: tc.save_state("ow"))
    _expect_error(
        ts.ConflictError,
        "CKPT-3",
        "save_state(overwrite=False) to an existing path",
        lambda: tc.save_state("ow", ttl_seconds=None, overwrite=False),
    )
    # the checkpoint never changed (CKPT-2), neither by training nor by the refused save (CKPT-3)
    again = service.create_training_client_from_state(path).result()
    _assert_same_lps(forward_logprobs(again, probe), first_lps, "CKPT-3", "after a refused save")
    assert tc.save_state("ow", ttl_seconds=None, overwrite=True).result().path == path, "[CKPT-3] overwrite path"
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
    _expect_error(
        ts.BadRequestError,
        "CKPT-5",
        "with_optimizer from a sampler_weights path",
        lambda: service.create_training_client_from_state_with_optimizer(sampler),
        field="path",
    )
    _expect_error(
        ts.BadRequestError,
        "CKPT-6",
        "a base_model that differs from the checkpoint's",
        lambda: service.create_training_client_from_state(weights, base_model="no-such/base-model"),
        field="base_model",
    )
    run = ts.ParsedCheckpointTinkerPath.from_tinker_path(weights).training_run_id
    missing = [f"tinker://{run}/weights/never-saved", "tinker://no-such-run-0/sampler_weights/x"]
    for path in missing:
        _expect_error(
            ts.NotFoundError,
            "CKPT-8",
            f"from_state({path})",
            partial(service.create_training_client_from_state, path),
        )
        _expect_error(
            ts.NotFoundError,
            "CKPT-8",
            f"create_sampling_client({path})",
            partial(service.create_sampling_client, model_path=path),
        )
    _expect_error(
        ts.NotFoundError,
        "CKPT-8",
        f"with_optimizer({missing[0]})",
        lambda: service.create_training_client_from_state_with_optimizer(missing[0]),
    )
    for bad in (
        "tinker://a/b",
        "s3://run/weights/x",
        f"tinker://{run}/other/x",
        f"tinker://{run}/weights/a/b",
        "tinker://../weights/x",
    ):
        _expect_error(
            ts.BadRequestError,
            "CKPT-8",
            f"from_state({bad})",
            partial(service.create_training_client_from_state, bad),
            field="path",
        )
        _expect_error(
            ts.BadRequestError,
            "CKPT-8",
            f"create_sampling_client({bad})",
            partial(service.create_sampling_client, model_path=bad),
            field="model_path",
        )


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
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 1)
    path = tc.save_state("elsewhere").result().path
    other = service_factory()
    loaded = _load("CKPT-7", f"{path} in a new ServiceClient", lambda: other.create_training_client_from_state(path))
    _assert_same_lps(forward_logprobs(loaded, probe), forward_logprobs(tc, probe), "CKPT-7", "loaded elsewhere")


def _all_training_runs(rest: Any, limit: int = 20) -> list[str]:
    """Every run id of ``list_training_runs``, following its pages (``limit``/``offset``) to ``total_count``."""
    ids: list[str] = []
    while True:
        page = rest.list_training_runs(limit=limit, offset=len(ids)).result()
        ids += [r.training_run_id for r in page.training_runs]
        total = page.cursor.total_count
        assert len(page.training_runs) <= limit, f"[CKPT-11] a page of limit {limit} has {len(page.training_runs)}"
        if len(ids) >= total or not page.training_runs:
            assert len(ids) == total == len(set(ids)), f"[CKPT-11] pages list {len(ids)} runs, cursor says {total}"
            return ids


@pytest.mark.requires("checkpoint_management")
@pytest.mark.spec("CKPT-11")
def test_listing_and_deleting_checkpoints(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    rest = service.create_rest_client()
    tc = training_client()
    first = tc.save_state("list-a").result().path
    tc.save_weights_and_get_sampling_client("ignored-name").result()  # writes no checkpoint (CKPT-12)
    second = tc.save_weights_for_sampler("list-b").result().path
    run = ts.ParsedCheckpointTinkerPath.from_tinker_path(first).training_run_id
    listed = rest.list_checkpoints(run).result().checkpoints
    assert [c.tinker_path for c in listed] == [first, second], f"[CKPT-11] listing {[c.tinker_path for c in listed]}"
    assert [c.checkpoint_type for c in listed] == ["training", "sampler"], "[CKPT-11] checkpoint types"
    assert run in _all_training_runs(rest), "[CKPT-11] the run is not listed"
    rest.delete_checkpoint_from_tinker_path(first).result()
    assert [c.tinker_path for c in rest.list_checkpoints(run).result().checkpoints] == [second], "[CKPT-11] delete"
    _expect_error(ts.NotFoundError, "CKPT-11", "deleting twice", lambda: rest.delete_checkpoint_from_tinker_path(first))
    _expect_error(
        ts.NotFoundError,
        "CKPT-11",
        "loading a deleted checkpoint",
        lambda: service.create_training_client_from_state(first),
    )


@pytest.mark.spec("CKPT-2")
def test_a_checkpoint_never_changes_after_it_is_written(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v)
    tc = training_client()
    _train(tc, v, 1)
    saved_lps = forward_logprobs(tc, probe)
    paths = [tc.save_state("ckpt-2").result().path, tc.save_weights_for_sampler("ckpt-2").result().path]
    _train(tc, v, 2, offset=3)
    moved = forward_logprobs(tc, probe)
    assert any(not np.array_equal(x, y) for x, y in zip(moved, saved_lps, strict=True)), (
        "[CKPT-2] training moved nothing"
    )
    for path in paths:
        loaded = _load("CKPT-2", path, partial(service.create_training_client_from_state, path))
        _assert_same_lps(forward_logprobs(loaded, probe), saved_lps, "CKPT-2", f"{path} after the saver trained on")
        seq = [(13 * i + 4) % v for i in range(10)]
        expected = logprobs_of(loaded.forward([sequence_datum(seq, [1.0] * 9)]).result())[0]
        got = service.create_sampling_client(model_path=path).result().compute_logprobs(ts.ModelInput.from_ints(seq))
        assert_close(
            np.array(got.result()[1:], dtype=np.float64), expected, "token", "CKPT-2", what=f"sampler of {path}"
        )


@pytest.mark.spec("CKPT-12")
def test_a_snapshot_sampler_writes_no_checkpoint(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    tc = training_client()
    run = ts.ParsedCheckpointTinkerPath.from_tinker_path(tc.save_state("ckpt-12-anchor").result().path).training_run_id
    sc = tc.save_weights_and_get_sampling_client("ckpt-12").result()
    assert isinstance(sc, ts.SamplingClient), f"[CKPT-12] the name must be accepted, got {sc!r}"
    for kind in ("sampler_weights", "weights"):
        path = f"tinker://{run}/{kind}/ckpt-12"
        _expect_error(
            ts.NotFoundError,
            "CKPT-12",
            f"loading {path} after save_weights_and_get_sampling_client('ckpt-12')",
            partial(service.create_training_client_from_state, path),
        )
    try:
        tc.save_weights_for_sampler("ckpt-12", ttl_seconds=None, overwrite=False).result()
    except ts.ConflictError as exc:
        raise AssertionError(f"[CKPT-12] the snapshot sampler wrote a checkpoint named by `name`: {exc}") from exc


@pytest.mark.spec("CKPT-13")
def test_ttl_and_user_metadata_are_applied_or_refused_by_name(
    conformance_backend: ConformanceBackend, service: ts.ServiceClient
) -> None:
    """A backend either applies ``ttl_seconds`` and ``user_metadata`` (listed ``expires_at`` and
    ``user_metadata``; an expired checkpoint is neither listed nor loadable) or refuses a value
    other than ``None`` with a ``BadRequestError`` naming it, raised by the call itself. Malformed
    values are refused by name either way."""
    base_model = conformance_backend.base_model
    tc0 = _load("CKPT-13", "a client", lambda: service.create_lora_training_client(base_model, rank=4, seed=0))
    for bad in (0, -5, 1.5, True):
        _refused_by_call(
            f"save_state(ttl_seconds={bad!r})",
            partial(tc0.save_state, "ckpt-13", ttl_seconds=bad),  # type: ignore[arg-type]  # 1.5 on purpose
            "ttl_seconds",
        )
    _refused_by_call(
        "create_lora_training_client(user_metadata={'k': 1})",
        lambda: service.create_lora_training_client(base_model, rank=4, seed=0, user_metadata={"k": 1}),  # type: ignore[dict-item]
        "user_metadata",
    )
    try:
        created = service.create_lora_training_client(base_model, rank=4, seed=0, user_metadata={"task": "ckpt-13"})
    except ts.BadRequestError as exc:
        assert exc.field == "user_metadata", f"[CKPT-13] refused on field {exc.field!r}, expected 'user_metadata'"
        _ttl_and_metadata_refused(conformance_backend, service)
        return
    tc = _load("CKPT-13", "user_metadata={'task': 'ckpt-13'}", lambda: created)
    start = time.time()
    state = tc.save_state("ckpt-13", ttl_seconds=3600, user_metadata={"k": "state"}).result().path
    short = tc.save_weights_for_sampler("ckpt-13-short", ttl_seconds=2, user_metadata={"k": "s"}).result().path
    kept = tc.save_weights_for_sampler("ckpt-13-kept").result().path
    try:
        rest = service.create_rest_client()
    except ts.Unsupported as exc:
        raise AssertionError(f"[CKPT-13] TTL and metadata accepted, but no RestClient shows them: {exc}") from exc
    listed = {c.tinker_path: c for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert set(listed) == {state, short, kept}, f"[CKPT-13] listed {sorted(listed)}"
    assert listed[state].user_metadata == {"k": "state"}, f"[CKPT-13] user_metadata {listed[state].user_metadata}"
    assert listed[short].user_metadata == {"k": "s"}, f"[CKPT-13] user_metadata {listed[short].user_metadata}"
    assert listed[kept].user_metadata is None and listed[kept].expires_at is None, "[CKPT-13] no TTL, no metadata"
    expires = listed[state].expires_at
    assert expires is not None, "[CKPT-13] a checkpoint saved with ttl_seconds lists no expires_at"
    assert start + 3600 - 1 <= expires.timestamp() <= time.time() + 3600 + 1, f"[CKPT-13] expires_at {expires}"
    run = rest.get_training_run(tc.model_id).result()
    assert run.user_metadata == {"task": "ckpt-13"}, f"[CKPT-13] run user_metadata {run.user_metadata}"
    time.sleep(max(0.0, start + 2.2 - time.time()))
    listed_after = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert listed_after == {state, kept}, f"[CKPT-13] after its TTL, listed {sorted(listed_after)}"
    try:
        service.create_sampling_client(model_path=short).result(timeout=120)
    except ts.NotFoundError:
        pass
    else:
        raise AssertionError(f"[CKPT-13] {short} loaded after its TTL")
    loaded = _load(
        "CKPT-13",
        f"{state} with user_metadata",
        lambda: service.create_training_client_from_state(state, None, {"a": "b"}),
    )
    assert loaded.get_info().lora_rank == 4, "[CKPT-13] loaded client"


def _ttl_and_metadata_refused(conformance_backend: ConformanceBackend, service: ts.ServiceClient) -> None:
    """CKPT-13 for a backend that refuses: every call refuses a non-``None`` value by name."""
    base_model = conformance_backend.base_model
    tc = _load(
        "CKPT-13",
        "user_metadata=None",
        lambda: service.create_lora_training_client(base_model, rank=4, seed=0, user_metadata=None),
    )
    for save in (tc.save_state, tc.save_weights_for_sampler):
        _refused_by_call(
            f"{save.__name__}(ttl_seconds=1)",
            partial(save, "ckpt-13", ttl_seconds=1),
            "ttl_seconds",
        )
    try:  # the refused saves wrote nothing: the name is still free
        paths = [
            tc.save_state("ckpt-13", ttl_seconds=None, overwrite=False).result().path,
            tc.save_weights_for_sampler("ckpt-13", ttl_seconds=None, overwrite=False).result().path,
        ]
    except ts.TinkerError as exc:
        raise AssertionError(f"[CKPT-13] saving with ttl_seconds=None after the refusals: {exc}") from exc
    for path in paths:
        _refused_by_call(
            f"create_training_client_from_state({path}, user_metadata=...)",
            partial(service.create_training_client_from_state, path, None, {"k": "v"}),
            "user_metadata",
        )
    _refused_by_call(
        "create_training_client_from_state_with_optimizer(user_metadata=...)",
        lambda: service.create_training_client_from_state_with_optimizer(paths[0], user_metadata={"k": "v"}),
        "user_metadata",
    )


def _refused_by_call(what: str, call: Callable[[], Any], field: str) -> None:
    """``call`` itself (not its future) raises a ``BadRequestError`` naming ``field`` (CKPT-13)."""
    try:
        result = call()
    except ts.BadRequestError as exc:
        assert exc.field == field, f"[CKPT-13] {what}: field {exc.field!r}, expected {field!r}"
        return
    except ts.TinkerError as exc:
        raise AssertionError(f"[CKPT-13] {what}: expected BadRequestError, got {type(exc).__name__}: {exc}") from exc
    if isinstance(result, ts.APIFuture):
        with contextlib.suppress(ts.TinkerError):
            result.result(timeout=120)
    raise AssertionError(f"[CKPT-13] {what}: accepted; expected a BadRequestError naming {field!r} from the call")
