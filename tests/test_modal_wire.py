"""The Modal backend's wire (backends/modal/wire.py): compact, plain, lossless, typed errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.backends.modal import wire
from tinker_std.errors import (
    BadRequestError,
    ConflictError,
    ContextLengthError,
    IncompatibleEnvironmentError,
    NotFoundError,
    RequestFailedError,
    Unsupported,
)


def _datum(n: int = 300) -> ts.Datum:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50_000, size=n + 1)
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": tokens[1:].tolist(),
            "weights": rng.random(n).astype(np.float32),
            "target_distribution": ts.TensorData.from_numpy(rng.random((n, 3)).astype(np.float32)),
        },
    )


def test_datums_round_trip_exactly_as_bytes_not_lists() -> None:
    data = [_datum(), _datum(5)]
    payload = wire.encode_datums(data)
    wire.check_plain(payload)
    chunk = payload[0]["chunks"][0]
    assert isinstance(chunk["data"], bytes) and chunk["dtype"] == "<i4"
    assert len(chunk["data"]) == 4 * 300  # int32 tokens: 4 bytes each
    weights = payload[0]["inputs"]["weights"]
    assert weights["dtype"] == "<f4" and len(weights["data"]) == 4 * 300
    assert payload[0]["inputs"]["target_distribution"]["shape"] == [300, 3]
    assert wire.decode_datums(pickle.loads(pickle.dumps(payload))) == data
    # the pickled request is close to the raw array bytes: 300 int32 + 300 int64 + 300 + 900 float32
    assert len(pickle.dumps(payload[0])) < (300 * 4 + 300 * 8 + 1200 * 4) * 1.1


def test_tokens_widen_to_int64_only_when_needed() -> None:
    assert wire.pack_tokens([1, 2, 3])["dtype"] == "<i4"
    big = [1, 2**40]
    packed = wire.pack_tokens(big)
    assert packed["dtype"] == "<i8" and wire.unpack_array(packed).tolist() == big


def test_floats_stay_float32_only_when_lossless() -> None:
    exact = [0.5, -1.25, float(np.float32(0.1))]
    assert wire.pack_floats(exact)["dtype"] == "<f4"
    precise = [0.1, 1.0 / 3.0]
    packed = wire.pack_floats(precise)
    assert packed["dtype"] == "<f8" and wire.unpack_array(packed).tolist() == precise


def test_forward_backward_output_round_trip() -> None:
    out = ts.ForwardBackwardOutput(
        loss_fn_outputs=[{"logprobs": ts.TensorData.from_numpy(np.array([-1.5, -0.25], dtype=np.float32))}],
        metrics={"loss:sum": 1.75, "tokens:sum": 2.0},
    )
    payload = wire.encode_forward_backward_output(out)
    wire.check_plain(payload)
    assert wire.decode_forward_backward_output(pickle.loads(pickle.dumps(payload))) == out


def test_sample_request_and_response_round_trip_with_nones_and_topk() -> None:
    from tinker_std.backend import SampleRequest

    request = SampleRequest(
        prompt=[5, 6, 7],
        num_samples=2,
        sampling_params=ts.SamplingParams(max_tokens=4, seed=3, stop=["\n"], temperature=0.7, top_k=5, top_p=0.9),
        include_prompt_logprobs=True,
        topk_prompt_logprobs=2,
    )
    assert wire.decode_sample_request(wire.encode_sample_request(request)) == request
    response = ts.SampleResponse(
        sequences=[
            ts.SampledSequence(stop_reason="length", tokens=[1, 2], logprobs=[-0.1, -2.0], sequence_id="a"),
            ts.SampledSequence(stop_reason="stop", tokens=[], logprobs=None),
        ],
        prompt_logprobs=[None, -1.0 / 3.0, -2.5],
        topk_prompt_logprobs=[None, [(4, -0.5), (9, -1.5)], [(3, -0.25)]],
    )
    payload = wire.encode_sample_response(response)
    wire.check_plain(payload)
    decoded = wire.decode_sample_response(pickle.loads(pickle.dumps(payload)))
    assert decoded == response
    assert decoded.prompt_logprobs is not None and decoded.prompt_logprobs[1] == -1.0 / 3.0  # float64 kept


def test_sampling_extras_cross_the_wire_exactly() -> None:
    """SDK-6/7/8 requests and results: every field survives encode -> pickle -> decode, and a
    request field the wire dropped would fail the equality (the engine would silently not see it)."""
    from tinker_std.backend import SampleRequest
    from tinker_std.types.sampling import PromptAltTokens

    request = SampleRequest(
        prompt=[5, 6, 7, 8],
        num_samples=1,
        sampling_params=ts.SamplingParams(max_tokens=2, seed=1),
        topk_sample_logprobs=3,
        target_prompt_ids=((6, -1), (7, 2**40), (1, 2)),
        prompt_alt_tokens_k=2,
    )
    payload = wire.encode_sample_request(request)
    wire.check_plain(payload)
    assert wire.decode_sample_request(pickle.loads(pickle.dumps(payload))) == request
    rng = np.random.default_rng(0)
    response = ts.SampleResponse(
        sequences=[
            ts.SampledSequence(
                stop_reason="length",
                tokens=[1, 2],
                logprobs=[-0.1, -2.0],
                topk_logprobs=[[(1, -0.1), (4, -2.5), (0, -3.0)], [(2, -2.0), (3, -2.25), (9, -4.0)]],
            )
        ],
        target_prompt_logprobs=ts.TensorData.from_numpy(-rng.random((3, 2)).astype(np.float32)),
        prompt_alt_tokens=PromptAltTokens(
            tokens=ts.TensorData.from_numpy(rng.integers(0, 100, (3, 2)).astype(np.int64)),
            logprobs=ts.TensorData.from_numpy(-rng.random((3, 2)).astype(np.float32)),
        ),
    )
    payload = wire.encode_sample_response(response)
    wire.check_plain(payload)
    assert wire.decode_sample_response(pickle.loads(pickle.dumps(payload))) == response


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("data[0].loss_fn_inputs.weights", "must be finite"),
        ContextLengthError("data[1]", "too long"),
        NotFoundError("no model x"),
        ConflictError("exists"),
        Unsupported("loss:dro", "torch"),
        RequestFailedError("boom", request_id="r1", category="user"),
        IncompatibleEnvironmentError("bad pair.", installed={"peft": "0.1"}, fix="pip install peft==0.21.2"),
    ],
)
def test_typed_errors_cross_with_class_and_fields(error: Exception) -> None:
    payload = wire.encode_error(error)
    wire.check_plain(payload)
    rebuilt = wire.decode_error(pickle.loads(pickle.dumps(payload)))
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert vars(rebuilt) == vars(error)


def test_other_exceptions_become_server_request_failures() -> None:
    rebuilt = wire.decode_error(wire.encode_error(ZeroDivisionError("division by zero")))
    assert isinstance(rebuilt, RequestFailedError) and rebuilt.category == "server"
    assert "ZeroDivisionError: division by zero" in str(rebuilt)


def test_check_plain_rejects_objects() -> None:
    with pytest.raises(TypeError, match=r"payload\.x\[1\] is a ndarray"):
        wire.check_plain({"x": [1, np.zeros(2)]})
