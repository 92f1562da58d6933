"""Bad input of every kind gets a typed error naming the field and changes nothing (spec ERR)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts

from _support import MODEL, assert_states_equal, make_service, rl_datum, sequence_datum, state_arrays

GOOD = sequence_datum([104, 105, 33, 10])


def _datum(**inputs: object) -> ts.Datum:
    return ts.Datum(model_input=ts.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs=inputs)  # type: ignore[arg-type]


BAD_TRAINING_CALLS: dict[str, tuple[Callable[[ts.TrainingClient], object], type[Exception], str]] = {
    "empty data": (lambda tc: tc.forward_backward([], "cross_entropy"), ts.BadRequestError, "data"),
    "not a datum": (lambda tc: tc.forward_backward(["x"], "cross_entropy"), ts.BadRequestError, "data[0]"),  # type: ignore[list-item]
    "unknown loss": (lambda tc: tc.forward_backward([GOOD], "mse"), ts.BadRequestError, "loss_fn"),
    "missing target_tokens": (
        lambda tc: tc.forward_backward([_datum(weights=[1.0, 1.0, 1.0])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.target_tokens",
    ),
    "mismatched target length": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.target_tokens",
    ),
    "mismatched weights length": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2, 3], weights=[1.0])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.weights",
    ),
    "wrong target dtype": (
        lambda tc: tc.forward_backward([_datum(target_tokens=np.array([1.0, 2.0, 3.0]))], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.target_tokens",
    ),
    "wrong weights dtype": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2, 3], weights=np.array([1, 1, 1]))], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.weights",
    ),
    "target id out of range": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2, 999])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.target_tokens",
    ),
    "input id out of range": (
        lambda tc: tc.forward_backward([sequence_datum([1, 5000, 3])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].model_input",
    ),
    "empty model input": (
        lambda tc: tc.forward_backward(
            [ts.Datum(model_input=ts.ModelInput.empty(), loss_fn_inputs={"target_tokens": []})], "cross_entropy"
        ),
        ts.BadRequestError,
        "data[0].model_input",
    ),
    "too long": (
        lambda tc: tc.forward_backward([sequence_datum([1] * 10_000)], "cross_entropy"),
        ts.ContextLengthError,
        "data[0].model_input",
    ),
    "NaN advantages": (
        lambda tc: tc.forward_backward([rl_datum([1, 2, 3], [0.5, float("nan")], [-1.0, -1.0])], "importance_sampling"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.advantages",
    ),
    "inf weights": (
        lambda tc: tc.forward_backward([sequence_datum([1, 2, 3], [1.0, float("inf")])], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.weights",
    ),
    "missing advantages": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2, 3], logprobs=[0.0] * 3)], "ppo"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.advantages",
    ),
    "input the loss does not take": (
        lambda tc: tc.forward_backward([_datum(target_tokens=[1, 2, 3], advantages=[0.0] * 3)], "cross_entropy"),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.advantages",
    ),
    "unknown config key": (
        lambda tc: tc.forward_backward([rl_datum([1, 2, 3], [1.0, 1.0], [-1.0, -1.0])], "ppo", {"clip_epsilon": 0.2}),
        ts.BadRequestError,
        "loss_fn_config.clip_epsilon",
    ),
    "non-finite config": (
        lambda tc: tc.forward_backward(
            [rl_datum([1, 2, 3], [1.0, 1.0], [-1.0, -1.0])], "ppo", {"clip_low_threshold": float("nan")}
        ),
        ts.BadRequestError,
        "loss_fn_config.clip_low_threshold",
    ),
    "soft targets for an RL loss": (
        lambda tc: tc.forward_backward(
            [_datum(target_tokens=np.ones((3, 2), dtype=np.int64), advantages=[1.0] * 3, logprobs=[0.0] * 3)],
            "importance_sampling",
        ),
        ts.BadRequestError,
        "data[0].loss_fn_inputs.target_tokens",
    ),
    "bad optimizer params": (lambda tc: tc.optim_step({"learning_rate": -1.0}), ts.BadRequestError, "optim_params"),  # type: ignore[arg-type]
    "optimizer params of the wrong type": (lambda tc: tc.optim_step(0.1), ts.BadRequestError, "optim_params"),  # type: ignore[arg-type]
    "checkpoint name with a slash": (lambda tc: tc.save_state("a/b"), ts.BadRequestError, "name"),
    "empty checkpoint name": (lambda tc: tc.save_weights_for_sampler(""), ts.BadRequestError, "name"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAINING_CALLS))
def test_bad_training_request_is_typed_names_field_and_changes_nothing(tmp_path: Path, case: str) -> None:
    call, error, field = BAD_TRAINING_CALLS[case]
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=1).result()
        tc.forward_backward([GOOD], "cross_entropy").result()
        tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
        tc.forward_backward([GOOD], "cross_entropy").result()  # pending gradient must survive too
        tc.save_state("kept").result()
        before = state_arrays(tc)
        checkpoints_before = sorted(p.name for p in (tmp_path / "ckpt").rglob("*"))
        with pytest.raises(error) as info:
            future = call(tc)
            future.result()  # type: ignore[attr-defined]
        assert getattr(info.value, "field", None) == field, str(info.value)
        assert_states_equal(before, state_arrays(tc))
        assert sorted(p.name for p in (tmp_path / "ckpt").rglob("*")) == checkpoints_before


BAD_SAMPLING_CALLS: dict[str, tuple[Callable[[ts.SamplingClient], object], type[Exception], str]] = {
    "prompt not a ModelInput": (
        lambda sc: sc.sample([1, 2], 1, ts.SamplingParams(max_tokens=2)),  # type: ignore[arg-type]
        ts.BadRequestError,
        "prompt",
    ),
    "empty prompt": (
        lambda sc: sc.sample(ts.ModelInput.empty(), 1, ts.SamplingParams(max_tokens=2)),
        ts.BadRequestError,
        "prompt",
    ),
    "prompt id out of range": (
        lambda sc: sc.sample(ts.ModelInput.from_ints([1, 999]), 1, ts.SamplingParams(max_tokens=2)),
        ts.BadRequestError,
        "prompt",
    ),
    "zero samples": (
        lambda sc: sc.sample(ts.ModelInput.from_ints([1]), 0, ts.SamplingParams(max_tokens=2)),
        ts.BadRequestError,
        "num_samples",
    ),
    "max_tokens past the context": (
        lambda sc: sc.sample(ts.ModelInput.from_ints([1]), 1, ts.SamplingParams(max_tokens=100_000)),
        ts.ContextLengthError,
        "sampling_params.max_tokens",
    ),
    "stop token out of range": (
        lambda sc: sc.sample(ts.ModelInput.from_ints([1]), 1, ts.SamplingParams(max_tokens=2, stop=[9999])),
        ts.BadRequestError,
        "sampling_params.stop[0]",
    ),
    "negative top-k prompt logprobs": (
        lambda sc: sc.sample(ts.ModelInput.from_ints([1]), 1, ts.SamplingParams(max_tokens=2), topk_prompt_logprobs=-1),
        ts.BadRequestError,
        "topk_prompt_logprobs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLING_CALLS))
def test_bad_sampling_request_is_typed_and_names_field(tmp_path: Path, case: str) -> None:
    call, error, field = BAD_SAMPLING_CALLS[case]
    with make_service(tmp_path) as service:
        sc = service.create_sampling_client(base_model=MODEL).result()
        with pytest.raises(error) as info:
            call(sc).result()  # type: ignore[attr-defined]
        assert getattr(info.value, "field", None) == field, str(info.value)


def test_bad_service_requests(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        with pytest.raises(ts.NotFoundError, match="mock/tiny"):
            service.create_lora_training_client(base_model="no/such-model").result()
        with pytest.raises(ts.BadRequestError) as info:
            service.create_lora_training_client(base_model=MODEL, rank=0)
        assert info.value.field == "rank"
        with pytest.raises(ts.BadRequestError) as info:
            service.create_lora_training_client(
                base_model=MODEL, train_mlp=False, train_attn=False, train_unembed=False
            )
        assert info.value.field.startswith("train_")
        with pytest.raises(ts.BadRequestError) as info:
            service.create_training_client_from_state("file:///tmp/x")
        assert info.value.field == "path"
        with pytest.raises(ts.NotFoundError):
            service.create_training_client_from_state("tinker://nope/weights/missing").result()
        with pytest.raises(ts.BadRequestError) as info:
            service.create_training_client_from_state_with_optimizer("tinker://run/sampler_weights/x")
        assert info.value.field == "path"
        with pytest.raises(ts.BadRequestError) as info:
            service.create_sampling_client()
        assert info.value.field == "model_path"


def test_optim_step_accepts_the_legacy_keyword_but_not_both(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=1).result()
        tc.forward_backward([GOOD], "cross_entropy")
        response = tc.optim_step(adam_params=ts.AdamParams(learning_rate=1e-2)).result()
        assert response.metrics is not None and response.metrics["step:max"] == 1
        with pytest.raises(ts.BadRequestError) as info:
            tc.optim_step(ts.AdamParams(), adam_params=ts.AdamParams())
        assert info.value.field == "adam_params"
