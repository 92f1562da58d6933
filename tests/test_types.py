"""Wire types: validation and conversions of TensorData, Datum, ModelInput, ForwardBackwardOutput and
checkpoint paths (the parameter types and field compatibility with tinker 0.38: test_types_fields.py)."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pydantic
import pytest
import torch

from tinker_std.types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ModelInput,
    ParsedCheckpointTinkerPath,
    TensorData,
)


def _error_text(exc: pytest.ExceptionInfo[pydantic.ValidationError]) -> str:
    return str(exc.value)


# --------------------------------------------------------------------------------------------
# TensorData
# --------------------------------------------------------------------------------------------


def test_tensor_data_float32_values_are_rounded_to_float32() -> None:
    td = TensorData(data=[0.1, 1 / 3, 1e-46], dtype="float32")
    assert td.data == [float(np.float32(0.1)), float(np.float32(1 / 3)), 0.0]
    assert td.data[0] != 0.1  # really rounded, not kept as float64
    assert td.to_numpy().dtype == np.float32
    assert td.to_numpy().tolist() == td.data


def test_tensor_data_int64_keeps_whole_numbers_as_ints() -> None:
    td = TensorData(data=[1, 2.0, -3, 2**40], dtype="int64")
    assert td.data == [1, 2, -3, 2**40]
    assert all(type(x) is int for x in td.data)
    assert td.to_numpy().dtype == np.int64


def test_tensor_data_int64_rejects_fractions_and_non_finite() -> None:
    for bad in ([1.5], [float("nan")], [float("inf")]):
        with pytest.raises(pydantic.ValidationError, match="whole numbers"):
            TensorData(data=bad, dtype="int64")


@pytest.mark.parametrize("value", [2**63, 2**64, 1e20, -(2**63) - 1])
def test_tensor_data_int64_rejects_values_outside_int64(value: Any) -> None:
    # BUG (reported): 2**63 and 1e20 silently wrap to -2**63; 2**64 raises a bare OverflowError
    with pytest.raises(pydantic.ValidationError):
        TensorData(data=[value], dtype="int64")


def test_tensor_data_int64_accepts_the_extremes() -> None:
    td = TensorData(data=[2**63 - 1, -(2**63)], dtype="int64")
    assert td.data == [2**63 - 1, -(2**63)]


def test_tensor_data_shape_errors_name_the_problem() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"shape \[2, 2\] holds 4 values but data has 3"):
        TensorData(data=[1.0, 2.0, 3.0], dtype="float32", shape=[2, 2])
    with pytest.raises(pydantic.ValidationError, match="shape must be non-negative"):
        TensorData(data=[], dtype="float32", shape=[-1, 0])
    with pytest.raises(pydantic.ValidationError, match="dtype must be 'int64' or 'float32'"):
        TensorData(data=[1.0], dtype="float64")
    with pytest.raises(pydantic.ValidationError, match="flat list of numbers"):
        TensorData(data=["a"], dtype="float32")


def test_tensor_data_resolved_shape() -> None:
    assert TensorData(data=[1, 2, 3], dtype="int64").resolved_shape == [3]
    assert TensorData(data=[1, 2, 3, 4, 5, 6], dtype="int64", shape=[3, 2]).resolved_shape == [3, 2]
    scalar = TensorData(data=[7.0], dtype="float32", shape=[])
    assert scalar.resolved_shape == []
    assert scalar.to_numpy().shape == ()
    assert TensorData(data=[], dtype="float32").resolved_shape == [0]


def test_tensor_data_numpy_round_trip() -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    td = TensorData.from_numpy(a)
    assert (td.dtype, td.shape) == ("float32", [2, 3])
    back = td.to_numpy()
    assert back.dtype == np.float32 and back.shape == (2, 3)
    np.testing.assert_array_equal(back, a.astype(np.float32))
    assert td.tolist() == back.tolist()

    ints = TensorData.from_numpy(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert (ints.dtype, ints.shape, ints.data) == ("int64", [2, 2], [1, 2, 3, 4])
    assert ints.to_numpy().dtype == np.int64

    with pytest.raises(ValueError, match="dtype bool"):
        TensorData.from_numpy(np.array([True, False]))


def test_tensor_data_torch_round_trip_and_bfloat16_widening() -> None:
    t = torch.tensor([[0.5, -1.25], [3.0, 1e-3]], dtype=torch.bfloat16, requires_grad=True)
    td = TensorData.from_torch(t)
    assert (td.dtype, td.shape) == ("float32", [2, 2])
    back = td.to_torch()
    assert back.dtype == torch.float32 and back.shape == (2, 2)
    # every bfloat16 value is exactly representable in float32
    assert torch.equal(back, t.detach().float())

    ids = TensorData.from_torch(torch.tensor([5, 6, 7]))
    assert (ids.dtype, ids.data) == ("int64", [5, 6, 7])
    assert ids.to_torch().dtype == torch.int64

    half = TensorData.from_torch(torch.tensor([0.1], dtype=torch.float16))
    assert half.data == [float(torch.tensor(0.1, dtype=torch.float16).float())]


# --------------------------------------------------------------------------------------------
# Datum
# --------------------------------------------------------------------------------------------


def _mi(n: int) -> ModelInput:
    return ModelInput.from_ints(list(range(n)))


def test_datum_plain_lists_are_typed_by_key() -> None:
    d = Datum(
        model_input=_mi(2),
        loss_fn_inputs={
            "target_tokens": [3, 4],
            "weights": [1, 0],
            "advantages": [0.5, -0.5],
            "logprobs": [-1.0, -2.0],
            "clip_low_threshold": [0.8, 0.8],
            "clip_high_threshold": [1.2, 1.2],
            "sequence_ratio_mask": [1, 0],
        },
    )
    inputs = d.loss_fn_inputs
    assert inputs["target_tokens"].dtype == "int64" and inputs["target_tokens"].data == [3, 4]
    for key in (
        "weights",
        "advantages",
        "logprobs",
        "clip_low_threshold",
        "clip_high_threshold",
        "sequence_ratio_mask",
    ):
        assert inputs[key].dtype == "float32", key
    assert inputs["weights"].data == [1.0, 0.0]


def test_datum_takes_any_mapping_as_a_dict() -> None:
    """The constructor is typed ``Mapping[str, TensorLike]``: a read-only mapping converts like a dict."""
    inputs = {"target_tokens": [3, 4], "weights": [1, 0]}
    from_proxy = Datum(model_input=_mi(2), loss_fn_inputs=types.MappingProxyType(inputs))
    assert from_proxy == Datum(model_input=_mi(2), loss_fn_inputs=inputs)
    assert from_proxy.loss_fn_inputs["target_tokens"].dtype == "int64"
    assert from_proxy.loss_fn_inputs["weights"].data == [1.0, 0.0]


def test_datum_nested_lists_keep_their_shape() -> None:
    d = Datum(
        model_input=_mi(2),
        loss_fn_inputs={"target_tokens": [[1, 2, 3], [4, 5, 6]], "weights": [[0.5, 0.25, 0.25], [1, 0, 0]]},
    )
    assert d.loss_fn_inputs["target_tokens"].shape == [2, 3]
    assert d.loss_fn_inputs["target_tokens"].to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert d.loss_fn_inputs["weights"].shape == [2, 3]


def test_datum_accepts_numpy_torch_tensor_data_and_dicts() -> None:
    d = Datum(
        model_input=_mi(3),
        loss_fn_inputs={
            "target_tokens": np.array([1, 2, 3]),
            "weights": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
            "advantages": TensorData(data=[1.0, 2.0, 3.0], dtype="float32"),
            "logprobs": {"data": [0.0, -1.0, -2.0], "dtype": "float32"},
            "my_custom_key": np.array([9.5, 8.5, 7.5]),  # unknown keys are fine when typed
        },
    )
    inputs = d.loss_fn_inputs
    assert inputs["target_tokens"].dtype == "int64" and inputs["target_tokens"].data == [1, 2, 3]
    assert inputs["weights"].dtype == "float32"
    assert inputs["weights"].data == [float(np.float32(x)) for x in (0.1, 0.2, 0.3)]
    assert inputs["advantages"].data == [1.0, 2.0, 3.0]
    assert inputs["logprobs"].data == [0.0, -1.0, -2.0]
    assert inputs["my_custom_key"].data == [9.5, 8.5, 7.5]


def test_datum_rejects_plain_lists_under_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        Datum(model_input=_mi(2), loss_fn_inputs={"my_custom_key": [1.0, 2.0]})
    assert "loss_fn_inputs" in _error_text(exc)
    assert "my_custom_key" in _error_text(exc)
    assert exc.value.errors()[0]["loc"] == ("loss_fn_inputs",)


def test_datum_rejects_ragged_lists() -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        Datum(model_input=_mi(2), loss_fn_inputs={"weights": [[1.0, 2.0], [3.0]]})
    assert exc.value.errors()[0]["loc"] == ("loss_fn_inputs",)
    assert "rectangular" in _error_text(exc)


def test_datum_rejects_fractional_target_tokens_and_extra_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="loss_fn_inputs"):
        Datum(model_input=_mi(1), loss_fn_inputs={"target_tokens": [1.5]})
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Datum(model_input=_mi(1), loss_fn_inputs={}, bogus=1)  # type: ignore[call-arg]


def test_datum_default_inputs_are_empty() -> None:
    assert Datum(model_input=_mi(1)).loss_fn_inputs == {}


# --------------------------------------------------------------------------------------------
# ModelInput
# --------------------------------------------------------------------------------------------


def test_model_input_helpers() -> None:
    mi = ModelInput.from_ints([5, 6, 7])
    assert mi.to_ints() == [5, 6, 7]
    assert mi.length == 3
    longer = mi.append(EncodedTextChunk(tokens=[8, 9])).append_int(10)
    assert longer.to_ints() == [5, 6, 7, 8, 9, 10]
    assert longer.length == 6
    assert len(longer.chunks) == 3
    assert mi.to_ints() == [5, 6, 7]  # append returns a new ModelInput
    empty = ModelInput.empty()
    assert (empty.length, empty.to_ints(), empty.chunks) == (0, [], [])
    assert empty.append_int(0).to_ints() == [0]


@pytest.mark.parametrize("tokens", [np.array([3, 1, 4]), torch.tensor([3, 1, 4]), (3, 1, 4)])
def test_model_input_from_ints_accepts_arrays_and_tensors(tokens: Any) -> None:
    assert ModelInput.from_ints(tokens).to_ints() == [3, 1, 4]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([1, -2], r"tokens\[1\] must be >= 0"),
        ([1.0], r"tokens\[0\] must be an int, got float"),
        ([True], r"tokens\[0\] must be an int, got bool"),
        (["7"], r"tokens\[0\] must be an int, got str"),
    ],
)
def test_model_input_rejects_negative_and_non_int_tokens(tokens: list[Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ModelInput.from_ints(tokens)
    with pytest.raises(pydantic.ValidationError, match=message):
        EncodedTextChunk(tokens=tokens)


def test_model_input_rejects_negative_tokens_from_iterators() -> None:
    # BUG (reported): a non-Sequence iterable skips the element checks in _coerce_tokens, and
    # pydantic then builds list[int] from it, negative ids included
    with pytest.raises(pydantic.ValidationError, match="must be >= 0"):
        EncodedTextChunk(tokens=iter([1, -2]))
    with pytest.raises(pydantic.ValidationError, match="must be >= 0"):
        ModelInput.from_ints(t for t in [1, -2])


def test_model_input_append_int_rejects_negative() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be >= 0"):
        ModelInput.empty().append_int(-1)


# --------------------------------------------------------------------------------------------
# ForwardBackwardOutput
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["loss:sum", "tokens:mean", "custom/kl:max"])
def test_forward_backward_output_accepts_name_reduction_keys(key: str) -> None:
    out = ForwardBackwardOutput(loss_fn_outputs=[], metrics={key: 1.0})
    assert out.metrics == {key: 1.0}


@pytest.mark.parametrize("key", ["loss", "a:b:c", "", "loss::sum"])
def test_forward_backward_output_rejects_bad_metric_keys(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="name:reduction"):
        ForwardBackwardOutput(loss_fn_outputs=[], metrics={key: 1.0})


def test_forward_backward_output_has_no_loss_attribute_and_ignores_extra_fields() -> None:
    out = ForwardBackwardOutput(
        loss_fn_outputs=[{"logprobs": TensorData(data=[-1.0], dtype="float32")}],
        metrics={"loss:sum": 1.0},
        server_added_field=3,  # type: ignore[call-arg]
    )
    assert not hasattr(out, "loss")
    assert not hasattr(out, "server_added_field")
    assert out.loss_fn_outputs[0]["logprobs"].data == [-1.0]


# --------------------------------------------------------------------------------------------
# ParsedCheckpointTinkerPath
# --------------------------------------------------------------------------------------------


def test_parse_checkpoint_paths() -> None:
    p = ParsedCheckpointTinkerPath.from_tinker_path("tinker://run-1:train:0/weights/step_10")
    assert (p.training_run_id, p.checkpoint_type, p.checkpoint_id, p.name) == (
        "run-1:train:0",
        "training",
        "weights/step_10",
        "step_10",
    )
    s = ParsedCheckpointTinkerPath.from_tinker_path("tinker://abc/sampler_weights/final.v2")
    assert (s.training_run_id, s.checkpoint_type, s.checkpoint_id) == ("abc", "sampler", "sampler_weights/final.v2")


def test_build_checkpoint_paths_round_trip() -> None:
    built = ParsedCheckpointTinkerPath.build("run", "sampler", "ckpt-1")
    assert built.tinker_path == "tinker://run/sampler_weights/ckpt-1"
    assert ParsedCheckpointTinkerPath.from_tinker_path(built.tinker_path) == built
    assert ParsedCheckpointTinkerPath.build("run", "training", "x").tinker_path == "tinker://run/weights/x"
    with pytest.raises(ValueError, match="tinker://<run>/<kind>/<name>"):
        ParsedCheckpointTinkerPath.build("run", "training", "a/b")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("s3://run/weights/a", "must start with 'tinker://'"),
        ("run/weights/a", "must start with 'tinker://'"),
        ("tinker://run/weights", "tinker://<run>/<kind>/<name>"),
        ("tinker://run/weights/a/b", "tinker://<run>/<kind>/<name>"),
        ("tinker://run/bogus/a", "has kind 'bogus'"),
        ("tinker://run/weights/", "checkpoint name '' is not valid"),
        ("tinker:///weights/a", "training run id '' is not valid"),
        ("tinker://run/weights/a b", "is not valid"),
        ("tinker://run/weights/a$b", "is not valid"),
        ("tinker://run/weights/..", "is not valid"),
        ("tinker://run/weights/.", "is not valid"),
        ("tinker://r*n/weights/a", "training run id"),
        ("tinker://run/weights/ckpt\n", "is not valid"),  # "$" would match before a trailing newline
        ("tinker://run\n/weights/ckpt", "is not valid"),
    ],
)
def test_parse_rejects_bad_paths(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParsedCheckpointTinkerPath.from_tinker_path(path)
