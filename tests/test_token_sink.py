"""The ``TokenSink`` seam (``tinker_std.backend``): a backend with ``incremental_decode`` reports
every sampled token, in order, with its logprob and top-k, before the response settles; the
response is the reference. A backend without it refuses the sink by name."""

from __future__ import annotations

import threading

import pytest

import tinker_std as ts
from tinker_std.client.sampling import decodes_incrementally, sample_with_sink


def test_the_torch_decode_loop_reports_each_token_before_the_response() -> None:
    service = ts.ServiceClient(backend="torch")
    try:
        sampler = service.create_sampling_client(base_model="tiny-llama").result()
        assert decodes_incrementally(sampler)
        seen: dict[int, list[tuple[int, float, list[tuple[int, float]] | None]]] = {}
        settled = threading.Event()

        def sink(sequence: int, token: int, logprob: float, top: list[tuple[int, float]] | None) -> None:
            assert not settled.is_set(), "a token was reported after the response settled"
            seen.setdefault(sequence, []).append((token, logprob, top))

        future = sample_with_sink(
            sampler,
            ts.ModelInput.from_ints([1, 7, 42, 99]),
            3,
            ts.SamplingParams(max_tokens=7, seed=3, temperature=0.8),
            sink,
            topk_sample_logprobs=2,
        ).future()
        future.add_done_callback(lambda _: settled.set())
        response = future.result()
        assert sorted(seen) == [0, 1, 2]
        for j, seq in enumerate(response.sequences):
            assert [t for t, _, _ in seen[j]] == seq.tokens
            assert [lp for _, lp, _ in seen[j]] == seq.logprobs
            assert [top for _, _, top in seen[j]] == seq.topk_logprobs
        plain = sampler.sample(
            ts.ModelInput.from_ints([1, 7, 42, 99]), 3, ts.SamplingParams(max_tokens=7, seed=3, temperature=0.8)
        ).result()
        assert [s.tokens for s in plain.sequences] == [s.tokens for s in response.sequences]  # the sink changes nothing
    finally:
        service.close()


def test_a_backend_without_incremental_decode_refuses_a_sink() -> None:
    service = ts.ServiceClient(backend="mock")
    try:
        sampler = service.create_sampling_client(
            base_model=service.get_server_capabilities().supported_models[0].model_name
        ).result()
        assert not decodes_incrementally(sampler)
        with pytest.raises(ts.Unsupported) as refused:
            sample_with_sink(sampler, ts.ModelInput.from_ints([1, 2]), 1, ts.SamplingParams(max_tokens=2), print)
        assert refused.value.capability == "incremental_decode"
    finally:
        service.close()
