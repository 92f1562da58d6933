"""Public types: fields, defaults, local validation (spec TYP). Backend-independent."""

from __future__ import annotations

import typing
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError

import tinker_std as ts


def _loc(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [".".join(str(p) for p in err["loc"]) for err in exc.value.errors()]


@pytest.fixture(autouse=True, scope="module")
def _provider_loaded(request: pytest.FixtureRequest) -> None:
    """Check the types as the provider's process has them: import the provider first (without
    constructing it), since a provider package that brings its own or modified types (TYP: a
    library guarantee, spec/01-types.md) does so on import."""
    from tinker_std.conformance.plugin import backend_class_for_report

    backend_class_for_report(request.config)


def _refused(
    statement: str,
    what: str,
    make: Any,
    errors: type[BaseException] | tuple[type[BaseException], ...] = ValidationError,
) -> None:
    """``make()`` must raise one of ``errors``; otherwise fail naming ``statement``."""
    try:
        make()
    except errors:
        return
    raise AssertionError(f"[{statement}] {what} was accepted")


@pytest.mark.spec("TYP-2")
def test_request_types_forbid_unknown_fields_and_are_immutable() -> None:
    datum = ts.Datum(model_input=ts.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3]})
    requests: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (ts.ModelInput, {"chunks": []}),
        (ts.EncodedTextChunk, {"tokens": [1]}),
        (ts.TensorData, {"data": [1.0], "dtype": "float32"}),
        (ts.Datum, {"model_input": datum.model_input}),
        (ts.AdamParams, {}),
        (ts.AdamOptimizerConfig, {}),
        (ts.LoraConfig, {"rank": 2}),
        (ts.SamplingParams, {}),
    ]
    for cls, fields in requests:
        _refused("TYP-2", f"{cls.__name__} with an unknown field", partial(cls, **fields, unexpected_field=1))
        instance = cls(**fields)
        name = next(iter(fields), next(iter(cls.model_fields)))
        _refused(
            "TYP-2",
            f"assigning {cls.__name__}.{name}",
            partial(setattr, instance, name, getattr(instance, name)),
            (ValidationError, TypeError, AttributeError),
        )
    out = ts.ForwardBackwardOutput(loss_fn_outputs=[], metrics={"loss:sum": 1.0}, server_side_extra=3)  # type: ignore[call-arg]
    assert out.metrics == {"loss:sum": 1.0}, "[TYP-2] response types ignore unknown fields"


@pytest.mark.spec("TYP-3", "TYP-9", "TYP-10", "TYP-12")
def test_constraint_violations_name_the_field() -> None:
    cases: list[tuple[type[Any], dict[str, Any], str]] = [
        (ts.AdamParams, {"learning_rate": -1.0}, "learning_rate"),
        (ts.AdamParams, {"beta1": 1.0}, "beta1"),
        (ts.AdamParams, {"beta2": -0.1}, "beta2"),
        (ts.AdamParams, {"eps": 0.0}, "eps"),
        (ts.AdamParams, {"weight_decay": float("nan")}, "weight_decay"),
        (ts.AdamParams, {"grad_clip_norm": -1.0}, "grad_clip_norm"),
        (ts.LoraConfig, {"rank": 0}, "rank"),
        (ts.SamplingParams, {"max_tokens": 0}, "max_tokens"),
        (ts.SamplingParams, {"temperature": -0.5}, "temperature"),
        (ts.SamplingParams, {"top_k": 0}, "top_k"),
        (ts.SamplingParams, {"top_p": 0.0}, "top_p"),
        (ts.SamplingParams, {"top_p": 1.5}, "top_p"),
        (ts.SamplingParams, {"stop": ""}, "stop"),
        (ts.SamplingParams, {"stop": [-1]}, "stop"),
    ]
    for cls, kwargs, field in cases:
        with pytest.raises(ValidationError) as exc:
            try:
                cls(**kwargs)
            except ValidationError:
                raise
            else:
                raise AssertionError(f"[TYP-3] {cls.__name__}({kwargs}) was accepted")
        assert any(field in loc for loc in _loc(exc)), f"[TYP-3] {cls.__name__}({kwargs}): locations {_loc(exc)}"
    _refused(
        "TYP-10",
        "LoraConfig with no family trained",
        lambda: ts.LoraConfig(rank=4, train_mlp=False, train_attn=False, train_unembed=False),
    )
    adam = ts.AdamParams()
    defaults = (adam.learning_rate, adam.beta1, adam.beta2, adam.eps, adam.weight_decay, adam.grad_clip_norm)
    assert defaults == (1e-4, 0.9, 0.95, 1e-12, 0.0, 0.0), f"[TYP-9] AdamParams defaults {defaults}"
    lora = ts.LoraConfig(rank=3)
    assert (lora.seed, lora.train_unembed, lora.train_mlp, lora.train_attn) == (None, True, True, True), "[TYP-10]"
    sp = ts.SamplingParams()
    got = (sp.max_tokens, sp.seed, sp.stop, sp.temperature, sp.top_k, sp.top_p)
    assert got == (None, None, None, 1.0, -1, 1.0), f"[TYP-12] SamplingParams defaults {got}"


@pytest.mark.spec("TYP-4")
def test_token_inputs() -> None:
    chunk = ts.EncodedTextChunk(tokens=np.array([3, 4], dtype=np.int32))
    assert chunk.tokens == [3, 4] and chunk.type == "encoded_text", f"[TYP-4] {chunk}"
    assert ts.EncodedTextChunk(tokens=torch.tensor([5, 6])).tokens == [5, 6], "[TYP-4] torch tokens"
    for bad in ([True], [-1], [1.5]):
        _refused("TYP-4", f"token ids {bad}", partial(ts.EncodedTextChunk, tokens=bad))  # type: ignore[arg-type]
    mi = ts.ModelInput.from_ints([1, 2])
    longer = mi.append(ts.EncodedTextChunk(tokens=[3])).append_int(4)
    assert longer.to_ints() == [1, 2, 3, 4] and longer.length == 4 and mi.to_ints() == [1, 2], "[TYP-4]"
    assert ts.ModelInput.empty().length == 0, "[TYP-4] ModelInput.empty()"


@pytest.mark.spec("TYP-5", "TYP-6")
def test_tensor_data() -> None:
    td = ts.TensorData(data=[0.1, 2.0, 3.0, 4.0, 5.0, 6.0], dtype="float32", shape=[2, 3])
    assert td.resolved_shape == [2, 3], f"[TYP-5] resolved_shape {td.resolved_shape}, given shape [2, 3]"
    arr = td.to_numpy()
    assert arr.dtype == np.float32 and arr.shape == (2, 3), f"[TYP-6] to_numpy gives {arr.dtype} {arr.shape}"
    assert td.data[0] == float(np.float32(0.1)), "[TYP-5] float32 data is rounded at construction"
    assert ts.TensorData(data=[1, 2], dtype="int64").resolved_shape == [2], "[TYP-5] shape=None means [len(data)]"
    for bad in ({"data": [1.0, 2.0], "dtype": "float32", "shape": [3]}, {"data": [1.5], "dtype": "int64"},
                {"data": [1.0], "dtype": "float64"}):  # fmt: skip
        _refused("TYP-5", f"TensorData({bad})", partial(ts.TensorData, **bad))  # type: ignore[arg-type]
    assert ts.TensorData.from_numpy(np.array([1, 2], np.int16)).dtype == "int64", "[TYP-6]"
    assert ts.TensorData.from_numpy(np.array([1.0], np.float64)).dtype == "float32", "[TYP-6]"
    _refused("TYP-6", "from_numpy of a string array", lambda: ts.TensorData.from_numpy(np.array(["x"])), ValueError)
    bf = ts.TensorData.from_torch(torch.tensor([[1.5, 2.0]], dtype=torch.bfloat16))
    assert bf.dtype == "float32" and bf.resolved_shape == [1, 2] and bf.tolist() == [[1.5, 2.0]], "[TYP-6]"
    assert torch.equal(bf.to_torch(), torch.tensor([[1.5, 2.0]])), "[TYP-6]"


@pytest.mark.spec("TYP-7")
def test_datum_inputs() -> None:
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1, 0], "advantages": np.array([0.5, 1.0])},
    )
    dtypes = {k: v.dtype for k, v in datum.loss_fn_inputs.items()}
    assert dtypes == {"target_tokens": "int64", "weights": "float32", "advantages": "float32"}, f"[TYP-7] {dtypes}"
    assert ts.Datum(model_input=ts.ModelInput.from_ints([1])).loss_fn_inputs == {}, "[TYP-7] default inputs"
    _refused(
        "TYP-7",
        "a plain list under an unknown key",
        lambda: ts.Datum(model_input=ts.ModelInput.from_ints([1]), loss_fn_inputs={"my_key": [1.0]}),
    )


@pytest.mark.spec("TYP-8", "TYP-11", "TYP-13")
def test_output_types() -> None:
    _refused(
        "TYP-8",
        "a metrics key without ':'",
        lambda: ts.ForwardBackwardOutput(loss_fn_outputs=[], metrics={"loss": 1.0}),
    )
    out = ts.ForwardBackwardOutput(loss_fn_outputs=[], metrics={"loss:sum": 2.0})
    assert out.loss_fn_output_type == "TensorData", f"[TYP-8] loss_fn_output_type default {out.loss_fn_output_type!r}"
    assert not hasattr(out, "loss"), "[TYP-8] ForwardBackwardOutput has no `loss` attribute"
    names = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce")
    assert ts.types.LOSS_FN_TYPES == names, f"[TYP-11] LOSS_FN_TYPES {ts.types.LOSS_FN_TYPES}"
    assert set(typing.get_args(ts.LossFnType)) == set(ts.types.LOSS_FN_TYPES), "[TYP-11]"
    seq = ts.SampledSequence(stop_reason="length", tokens=[1], logprobs=[-0.5])
    assert seq.sequence_id == "" and ts.SampleResponse(sequences=[seq]).prompt_logprobs is None, "[TYP-13]"
    _refused("TYP-13", "stop_reason 'eos'", lambda: ts.SampledSequence(stop_reason="eos", tokens=[1], logprobs=[-0.5]))  # type: ignore[arg-type]


@pytest.mark.spec("TYP-14")
def test_information_types() -> None:
    model = ts.SupportedModel(model_name="m", max_context_length=8)
    assert (model.trainable, model.sampleable) == (True, True), f"[TYP-14] SupportedModel defaults {model}"
    info = ts.GetInfoResponse(
        model_data=ts.ModelData(arch="a", model_name="m", tokenizer_id="t"), model_id="id", lora_rank=4, model_name="m"
    )
    assert info.optimizer_config == ts.AdamOptimizerConfig() and info.is_lora is True, f"[TYP-14] defaults {info}"
    assert info.optimizer_config.type == "adamw", f"[TYP-14] optimizer_config {info.optimizer_config}"


@pytest.mark.spec("TYP-15")
def test_checkpoint_paths_parse() -> None:
    for kind, checkpoint_type in (("weights", "training"), ("sampler_weights", "sampler")):
        path = f"tinker://run-1/{kind}/step_2"
        parsed = ts.ParsedCheckpointTinkerPath.from_tinker_path(path)
        got = (parsed.tinker_path, parsed.training_run_id, parsed.checkpoint_type, parsed.checkpoint_id)
        assert got == (path, "run-1", checkpoint_type, f"{kind}/step_2"), f"[TYP-15] {path} parsed as {got}"
    for bad in ("tinker://run-1/weights", "tinker://run-1/other/x", "file://run-1/weights/x"):
        _refused(
            "TYP-15",
            f"from_tinker_path({bad!r})",
            partial(ts.ParsedCheckpointTinkerPath.from_tinker_path, bad),
            ValueError,
        )


#: The fields each type must have, as listed in 01-types.md (TYP-4..TYP-15).
LISTED_FIELDS: dict[type[Any], set[str]] = {
    ts.EncodedTextChunk: {"tokens", "type"},
    ts.ModelInput: {"chunks"},
    ts.TensorData: {"data", "dtype", "shape"},
    ts.Datum: {"model_input", "loss_fn_inputs"},
    ts.ForwardBackwardOutput: {"loss_fn_output_type", "loss_fn_outputs", "metrics"},
    ts.AdamParams: {"learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"},
    ts.AdamOptimizerConfig: {"type"},
    ts.OptimStepResponse: {"metrics"},
    ts.LoraConfig: {"rank", "seed", "train_unembed", "train_mlp", "train_attn"},
    ts.SamplingParams: {"max_tokens", "seed", "stop", "temperature", "top_k", "top_p"},
    ts.SampleResponse: {"sequences", "prompt_logprobs", "topk_prompt_logprobs"},
    ts.SampledSequence: {"stop_reason", "tokens", "logprobs", "sequence_id"},
    ts.GetInfoResponse: {"model_data", "model_id", "optimizer_config", "is_lora", "lora_rank", "model_name"},
    ts.ModelData: {"arch", "model_name", "tokenizer_id"},
    ts.GetServerCapabilitiesResponse: {"supported_models"},
    ts.SupportedModel: {"model_name", "max_context_length", "trainable", "sampleable"},
    ts.SaveWeightsResponse: {"path"},
    ts.SaveWeightsForSamplerResponse: {"path"},
    ts.ParsedCheckpointTinkerPath: {"tinker_path", "training_run_id", "checkpoint_type", "checkpoint_id"},
    ts.Checkpoint: {
        "checkpoint_id", "checkpoint_type", "time", "tinker_path", "size_bytes", "public", "user_metadata", "expires_at"
    },
    ts.TrainingRun: {"training_run_id", "base_model", "is_lora", "lora_rank", "last_checkpoint_time"},
}  # fmt: skip


@pytest.mark.spec("TYP-1", "TYP-14", "TYP-15")
def test_types_have_the_listed_fields() -> None:
    for cls, fields in LISTED_FIELDS.items():
        missing = fields - set(cls.model_fields)
        assert not missing, f"[TYP-1] {cls.__name__} lacks fields {sorted(missing)}"
