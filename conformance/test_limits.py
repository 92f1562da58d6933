"""Request limits (spec LIM-1..LIM-3, tinker-std additions): refused typed, naming the field, before
anything is queued or allocated."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import probe_batch, sequence_datum
from tinker_std.conformance.plugin import ConformanceBackend

Factory = Callable[..., ts.TrainingClient]


@pytest.mark.spec("LIM-1")
def test_lora_rank_is_bounded(conformance_backend: ConformanceBackend, service: ts.ServiceClient) -> None:
    cap = service.limits.max_lora_rank
    for rank in (2**31, cap + 1):
        start = time.monotonic()
        with pytest.raises(ts.LimitExceededError) as info:
            service.create_lora_training_client(base_model=conformance_backend.base_model, rank=rank).result()
        assert info.value.field == "rank", f"[LIM-1] rank {rank}: field {info.value.field!r}"
        assert time.monotonic() - start < 30, f"[LIM-1] rank {rank} took {time.monotonic() - start:.0f} s to refuse"


@pytest.mark.spec("LIM-2")
def test_datums_per_call_are_bounded(
    conformance_backend: ConformanceBackend, service_factory: Callable[..., ts.ServiceClient]
) -> None:
    small = service_factory(limits=ts.Limits(max_datums_per_call=3))
    tc = small.create_lora_training_client(base_model=conformance_backend.base_model, rank=4, seed=0).result()
    probe = probe_batch(conformance_backend.vocab_size)
    before = tc.forward(probe).result()
    data = [*probe, sequence_datum([1, 2, 3])]
    for call in (tc.forward, tc.forward_backward):
        with pytest.raises(ts.LimitExceededError) as info:
            call(data, "cross_entropy")
        assert info.value.field == "data", f"[LIM-2] field {info.value.field!r}"
    tc.forward_backward(probe, "cross_entropy").result()  # at the limit: accepted
    assert (
        tc.forward(probe).result().loss_fn_outputs[0]["logprobs"].tolist()
        == before.loss_fn_outputs[0]["logprobs"].tolist()
    ), "[LIM-2] forward_backward moved the weights"


@pytest.mark.spec("LIM-3")
def test_sample_work_is_bounded(
    conformance_backend: ConformanceBackend, service_factory: Callable[..., ts.ServiceClient]
) -> None:
    small = service_factory(limits=ts.Limits(max_num_samples=4, max_sample_tokens=12))
    sampler = small.create_sampling_client(base_model=conformance_backend.base_model).result()
    prompt = ts.ModelInput.from_ints([1, 2, 3])
    cases = [(5, 1, "num_samples"), (4, 4, "sampling_params.max_tokens"), (2, 7, "sampling_params.max_tokens")]
    for num_samples, max_tokens, field in cases:
        with pytest.raises(ts.LimitExceededError) as info:
            sampler.sample(prompt, num_samples, ts.SamplingParams(max_tokens=max_tokens, seed=0))
        assert info.value.field == field, f"[LIM-3] {num_samples} x {max_tokens}: field {info.value.field!r}"
    out = sampler.sample(prompt, 4, ts.SamplingParams(max_tokens=3, seed=0)).result()  # 12: at the limit
    assert len(out.sequences) == 4, "[LIM-3] a request at the limit must run"
