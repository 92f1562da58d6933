"""Cookbook-style code written for the official ``tinker`` SDK runs with only the import changed.

The two functions below are written exactly as tinker-cookbook call sites are (both the single
future style and the classic double-await style); the module is passed in as ``tinker``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType

import pytest

import tinker_std

BASE_MODEL = "mock/tiny"


def sync_style(tinker: ModuleType) -> tuple[list[float], list[int]]:
    types = tinker.types
    service_client = tinker.ServiceClient()
    training_client = service_client.create_lora_training_client(base_model=BASE_MODEL, rank=8).result()
    tokenizer = training_client.get_tokenizer()
    tokens = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens=tokens[:-1]),
        loss_fn_inputs=dict(target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)),
    )
    losses = []
    for _ in range(3):
        fwd_bwd_future = training_client.forward_backward([datum], loss_fn="cross_entropy")
        optim_future = training_client.optim_step(types.AdamParams(learning_rate=1e-2))
        fwd_bwd_result = fwd_bwd_future.result()
        optim_future.result()
        losses.append(fwd_bwd_result.metrics["loss:sum"])
    save_result = training_client.save_weights_for_sampler(name="final").result()
    sampling_client = service_client.create_sampling_client(model_path=save_result.path).result()
    params = types.SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"])
    result = sampling_client.sample(prompt=types.ModelInput.from_ints(tokens), num_samples=1, sampling_params=params)
    sequence = result.result().sequences[0]
    assert sequence.stop_reason in ("stop", "length")
    info = training_client.get_info()
    assert info.model_data.model_name == BASE_MODEL and info.lora_rank == 8
    return losses, sequence.tokens


async def async_style(tinker: ModuleType) -> tuple[list[float], list[int]]:
    types = tinker.types
    service_client = tinker.ServiceClient()
    training_client = await service_client.create_lora_training_client_async(base_model=BASE_MODEL, rank=8)
    tokenizer = training_client.get_tokenizer()
    tokens = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens=tokens[:-1]),
        loss_fn_inputs=dict(target_tokens=tokens[1:], weights=[1.0] * (len(tokens) - 1)),
    )
    losses = []
    for _ in range(3):
        fwd_bwd_future = await training_client.forward_backward_async([datum], loss_fn="cross_entropy")
        optim_future = await training_client.optim_step_async(types.AdamParams(learning_rate=1e-2))
        fwd_bwd_result = await fwd_bwd_future.result_async()
        await optim_future
        losses.append(fwd_bwd_result.metrics["loss:sum"])
    save_future = await training_client.save_weights_for_sampler_async(name="final")
    sampling_client = await service_client.create_sampling_client_async(model_path=(await save_future).path)
    params = types.SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"])
    response = await sampling_client.sample_async(
        prompt=types.ModelInput.from_ints(tokens), num_samples=1, sampling_params=params
    )
    logprobs = await sampling_client.compute_logprobs_async(types.ModelInput.from_ints(tokens))
    assert logprobs[0] is None and len(logprobs) == len(tokens)
    return losses, response.sequences[0].tokens


def test_both_call_styles_run_unchanged_and_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_BACKEND", "mock")
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    sync_losses, sync_tokens = sync_style(tinker_std)
    async_losses, async_tokens = asyncio.run(async_style(tinker_std))
    assert sync_losses[-1] < sync_losses[0]
    # the default LoRA seed is random, so the two runs are independent draws: compare behaviour, not bits
    assert async_losses[-1] < async_losses[0]
    assert len(sync_tokens) >= 1 and len(async_tokens) >= 1


def test_types_module_and_errors_have_the_sdk_names() -> None:
    for name in (
        "Datum", "ModelInput", "EncodedTextChunk", "TensorData", "AdamParams", "SamplingParams",
        "ForwardBackwardOutput", "OptimStepResponse", "SampleResponse", "SampledSequence", "LoraConfig",
        "GetInfoResponse", "GetServerCapabilitiesResponse", "SaveWeightsResponse", "SaveWeightsForSamplerResponse",
        "ParsedCheckpointTinkerPath", "Checkpoint",
    ):  # fmt: skip
        assert hasattr(tinker_std.types, name), name
    for name in ("TinkerError", "BadRequestError", "NotFoundError", "ConflictError", "RequestFailedError", "APIFuture"):
        assert hasattr(tinker_std, name), name
    for name in ("ServiceClient", "TrainingClient", "SamplingClient", "RestClient"):
        assert hasattr(tinker_std, name), name
