"""Wire type fields: AdamParams/SamplingParams/LoraConfig defaults and bounds; every type's fields vs tinker 0.38."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from tinker_std.types import (
    AdamParams,
    Checkpoint,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    GetInfoResponse,
    LoraConfig,
    ModelInput,
    OptimStepResponse,
    SampledSequence,
    SamplingParams,
    TensorData,
)

# --------------------------------------------------------------------------------------------
# AdamParams, SamplingParams, LoraConfig
# --------------------------------------------------------------------------------------------


def test_adam_params_defaults() -> None:
    p = AdamParams()
    assert (p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm) == (
        1e-4,
        0.9,
        0.95,
        1e-12,
        0.0,
        0.0,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": -1e-3},
        {"learning_rate": float("nan")},
        {"learning_rate": float("inf")},
        {"beta1": 1.0},
        {"beta1": -0.1},
        {"beta2": 1.0},
        {"eps": 0.0},
        {"eps": -1e-8},
        {"weight_decay": -0.1},
        {"grad_clip_norm": -1.0},
        {"lr": 1e-3},  # unknown field: request types forbid extras
    ],
)
def test_adam_params_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        AdamParams(**kwargs)


def test_adam_params_accepts_edge_values() -> None:
    p = AdamParams(learning_rate=0.0, beta1=0.0, beta2=0.0, eps=1e-30, weight_decay=0.0, grad_clip_norm=0.0)
    assert p.learning_rate == 0.0 and p.beta1 == 0.0


def test_sampling_params_defaults() -> None:
    p = SamplingParams()
    assert (p.max_tokens, p.seed, p.stop, p.temperature, p.top_k, p.top_p) == (None, None, None, 1.0, -1, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"stop": ""}, "stop string must not be empty"),
        ({"stop": ["ok", ""]}, r"stop\[1\] must not be empty"),
        ({"stop": [3, -1]}, r"stop\[1\] must be a non-negative token id"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_sampling_params_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("stop", [None, [], "\n\n", ["a", "b"], [0, 2]])
def test_sampling_params_accepts_stop_forms(stop: Any) -> None:
    assert SamplingParams(stop=stop).stop == stop


def test_sampling_params_accepts_edge_values() -> None:
    p = SamplingParams(temperature=0.0, top_k=1, top_p=1e-9, max_tokens=1)
    assert (p.temperature, p.top_k, p.max_tokens) == (0.0, 1, 1)


def test_lora_config_needs_one_trained_part_and_positive_rank() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least one of"):
        LoraConfig(rank=4, train_unembed=False, train_mlp=False, train_attn=False)
    for flag in ("train_unembed", "train_mlp", "train_attn"):
        others = {f: False for f in ("train_unembed", "train_mlp", "train_attn") if f != flag}
        cfg = LoraConfig(rank=4, **{flag: True}, **others)
        assert getattr(cfg, flag) is True
    with pytest.raises(pydantic.ValidationError):
        LoraConfig(rank=0)
    with pytest.raises(pydantic.ValidationError):
        LoraConfig()  # type: ignore[call-arg]
    default = LoraConfig(rank=8)
    assert (default.seed, default.train_unembed, default.train_mlp, default.train_attn) == (None, True, True, True)


# --------------------------------------------------------------------------------------------
# Field compatibility with the official tinker SDK (0.38)
# --------------------------------------------------------------------------------------------

REQUIRED = object()  # field exists and has no default
PRESENT = object()  # field exists; default not pinned by the fact sheet

#: From /work/shared/reference/tinker-semantics.md section 2 (tinker 0.38 ``tinker/types``),
#: cross-checked against the SDK sources of AdamParams, SamplingParams and LoraConfig.
OFFICIAL_FIELDS: dict[type[pydantic.BaseModel], dict[str, Any]] = {
    AdamParams: {
        "learning_rate": 1e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    },
    SamplingParams: {"max_tokens": None, "seed": None, "stop": None, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
    LoraConfig: {"rank": REQUIRED, "seed": None, "train_unembed": True, "train_mlp": True, "train_attn": True},
    SampledSequence: {"stop_reason": REQUIRED, "tokens": REQUIRED, "logprobs": PRESENT, "sequence_id": PRESENT},
    Datum: {"model_input": REQUIRED, "loss_fn_inputs": {}},
    ModelInput: {"chunks": REQUIRED},
    EncodedTextChunk: {"tokens": REQUIRED, "type": "encoded_text"},
    TensorData: {"data": REQUIRED, "dtype": REQUIRED, "shape": None},
    ForwardBackwardOutput: {"loss_fn_output_type": PRESENT, "loss_fn_outputs": REQUIRED, "metrics": PRESENT},
    OptimStepResponse: {"metrics": None},
    GetInfoResponse: {
        "model_data": REQUIRED,
        "model_id": REQUIRED,
        "optimizer_config": PRESENT,
        "is_lora": PRESENT,
        "lora_rank": PRESENT,
        "model_name": PRESENT,
    },
    Checkpoint: {
        "checkpoint_id": REQUIRED,
        "checkpoint_type": REQUIRED,
        "time": REQUIRED,
        "tinker_path": REQUIRED,
        "size_bytes": PRESENT,
        "public": PRESENT,
        "user_metadata": PRESENT,
        "expires_at": PRESENT,
    },
}


@pytest.mark.parametrize("model", list(OFFICIAL_FIELDS), ids=lambda m: m.__name__)
def test_fields_and_defaults_match_tinker_0_38(model: type[pydantic.BaseModel]) -> None:
    fields = model.model_fields
    for name, expected in OFFICIAL_FIELDS[model].items():
        assert name in fields, f"{model.__name__} lacks field {name!r}"
        info = fields[name]
        if expected is REQUIRED:
            assert info.is_required(), f"{model.__name__}.{name} should be required"
        elif expected is not PRESENT:
            assert not info.is_required(), f"{model.__name__}.{name} should have a default"
            assert info.get_default(call_default_factory=True) == expected, f"{model.__name__}.{name}"


def test_fields_match_installed_official_sdk() -> None:
    """When the official SDK is importable, every public field it names must exist here too.

    SDK 0.38 keeps some fields numpy-backed (``SampledSequence.tokens_np`` behind a ``tokens``
    property, private caches such as ``_tokens_list``): ``x_np`` is matched by our field ``x``, and
    private names are the SDK's storage, not its interface."""
    official = pytest.importorskip("tinker.types")
    for ours in OFFICIAL_FIELDS:
        theirs = getattr(official, ours.__name__, None)
        their_fields = getattr(theirs, "model_fields", None) or getattr(theirs, "__dataclass_fields__", {})
        for name in their_fields:
            public = name.removesuffix("_np")
            if name.startswith("_") or public in {
                "model_input_spans",
                "loss_fn_input_spans",
                "sparse_crow_indices",
                "sparse_col_indices",
                "topk_logprobs",
            }:
                continue  # SDK storage, or features outside tinker-std v0.1
            assert public in ours.model_fields, f"{ours.__name__} lacks official field {public!r}"
