"""Inflight samplers: which weights ``kind="inflight"`` samplers serve, and when (spec INF).

The reference for "the weights at a position" is ``TrainingClient.forward`` submitted at that
position (FB-1, ORD-1): an inflight sampler's prompt logprobs must match the forward at its
training client's newest inflight save (tolerance ``token``), and stay bit-identical across
training that publishes nothing (INF-3)."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, probe_batch, sequence_datum
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _probe(v: int) -> tuple[list[ts.Datum], list[int]]:
    probe = probe_batch(v, explicit=True)
    seq = [*probe[0].model_input.to_ints(), probe[0].loss_fn_inputs["target_tokens"].to_numpy().tolist()[-1]]
    return probe, seq


def _train(tc: ts.TrainingClient, probe: list[ts.Datum]) -> None:
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM)


def _served(sc: ts.SamplingClient, seq: list[int]) -> np.ndarray:
    values = sc.compute_logprobs(ts.ModelInput.from_ints(seq)).result()
    return np.array([np.nan if x is None else x for x in values[1:]], dtype=np.float64)


def _weights_at(tc: ts.TrainingClient, seq: list[int]) -> ts.APIFuture[ts.ForwardBackwardOutput]:
    return tc.forward([sequence_datum(seq, explicit=True)])


def _logprobs(future: ts.APIFuture[ts.ForwardBackwardOutput]) -> np.ndarray:
    return np.asarray(future.result().loss_fn_outputs[0]["logprobs"].to_numpy(), dtype=np.float64)


@pytest.mark.spec("INF-1", "INF-2", "INF-3")
def test_inflight_samplers_follow_inflight_saves(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe, seq = _probe(conformance_backend.vocab_size)
    tc = training_client()
    _train(tc, probe)
    w1 = _weights_at(tc, seq)
    a = tc.save_weights_and_get_sampling_client(kind="inflight").result()  # publishes W1 at this position
    served_w1 = _served(a, seq)
    assert_close(served_w1, _logprobs(w1), "token", "INF-1", what="inflight sampler vs forward at its save")
    _train(tc, probe)
    tc.optim_step(ADAM).result()
    assert_replay(_served(a, seq), served_w1, "token", "INF-3", what="inflight sampler after optim_steps, no save")
    w2 = _weights_at(tc, seq)
    saving = tc.save_weights_and_get_sampling_client(kind="inflight")  # publishes W2 at this position
    later = [tc.forward_backward(probe, "cross_entropy"), tc.optim_step(ADAM)]  # submitted after the save
    b = saving.result()
    for f in later:
        f.result()
    expected = _logprobs(w2)
    assert not np.allclose(expected, served_w1, atol=1e-4), "training should have moved the probe's logprobs"
    assert_close(_served(b, seq), expected, "token", "INF-1", what="newest inflight sampler vs forward at its save")
    assert_close(_served(a, seq), expected, "token", "INF-2", what="older inflight sampler after a newer save")


@pytest.mark.spec("INF-4", "INF-5")
def test_inflight_saves_leave_snapshots_and_other_models_alone(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe, seq = _probe(conformance_backend.vocab_size)
    tc, other = training_client(), training_client()
    _train(tc, probe)
    snapshot = tc.save_weights_and_get_sampling_client().result()
    other_inflight = other.save_weights_and_get_sampling_client(kind="inflight").result()
    before, other_before = _served(snapshot, seq), _served(other_inflight, seq)
    _train(tc, probe)
    tc.save_weights_and_get_sampling_client(kind="inflight").result()
    assert_replay(_served(snapshot, seq), before, "token", "INF-4", what="snapshot sampler after an inflight save")
    assert_replay(_served(other_inflight, seq), other_before, "token", "INF-5", what="another model's inflight sampler")


def _refused_field(call: Callable[[], object]) -> str | None:
    """The field a ``BadRequestError`` from ``call`` names; ``None`` if it did not raise one."""
    try:
        call()
    except ts.BadRequestError as exc:
        return exc.field
    return None


@pytest.mark.spec("INF-6")
def test_an_unknown_sampler_kind_is_refused(training_client: Factory) -> None:
    tc = training_client()
    for kind in ("live", "", None, 1):
        field = _refused_field(lambda k=kind: tc.save_weights_and_get_sampling_client(kind=k))  # type: ignore[misc]
        assert field == "kind", f"[INF-6] kind={kind!r}: refused naming {field!r} (None: accepted), expected kind"


@pytest.mark.spec("INF-7")
def test_an_inflight_sampler_has_no_handle(training_client: Factory) -> None:
    sc = training_client().save_weights_and_get_sampling_client(kind="inflight").result()
    for what, call in (("get_sampler_handle", sc.get_sampler_handle), ("pickle", lambda: pickle.dumps(sc))):
        field = _refused_field(call)
        assert field == "kind", f"[INF-7] {what}: refused naming {field!r} (None: allowed), expected kind"
