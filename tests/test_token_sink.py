"""The ``TokenSink`` seam (``tinker_std.backend``): a backend with ``incremental_decode`` reports
every sampled token, in order, with its logprob and top-k, before the response settles; the
response is the reference. A backend without it refuses the sink by name. A sink that raises
(``SinkClosed``, or anything else) stops and fails its own request only."""

from __future__ import annotations

import threading

import pytest

import tinker_std as ts
from tinker_std.backend import SampleRequest, SamplerSpec, SinkClosed
from tinker_std.backends.torch import TorchSettings, sampler
from tinker_std.backends.torch.models import BUILTIN_MODELS, builtin_path, load_causal_lm, load_tokenizer
from tinker_std.client.sampling import decodes_incrementally, sample_with_sink
from tinker_std.errors import RequestFailedError


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


@pytest.mark.parametrize("failure", [SinkClosed("client went away"), ValueError("a broken sink")])
def test_a_sink_that_raises_stops_its_request_only(
    failure: Exception, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A sink that raises after ``k`` tokens: its request settles with ``RequestFailedError`` after
    ``k`` decode steps (not ``max_tokens``), and a seeded request decoded in the same batch gets
    exactly the tokens and logprobs it gets alone (SMP-12: dropping a row changes no other row)."""
    import torch

    path = str(builtin_path("tiny-llama", tmp_path_factory.getbasetemp() / "tinker-std-cache"))
    model, tokenizer = load_causal_lm(path, torch.float32, torch.device("cpu")), load_tokenizer(path)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    spec = SamplerSpec("s", "tiny-llama", vocab, BUILTIN_MODELS["tiny-llama"].max_context_length)
    settings = TorchSettings.from_env()
    k, max_tokens = 3, 40
    calls: list[tuple[int, int]] = []

    def stopping(sequence: int, token: int, logprob: float, top: list[tuple[int, float]] | None) -> None:
        calls.append((sequence, token))
        if len(calls) == k:
            raise failure

    params = ts.SamplingParams(max_tokens=max_tokens, seed=5, temperature=1.0)
    stopped = SampleRequest(prompt=[1, 7, 42, 99, 3], num_samples=2, sampling_params=params, on_tokens=stopping)
    other = SampleRequest(prompt=[1, 11, 12], num_samples=2, sampling_params=ts.SamplingParams(max_tokens=12, seed=9))
    items = [sampler.SampleItem(stopped, spec, None), sampler.SampleItem(other, spec, None)]
    got = sampler.sample_batch(model, items, tokenizer, torch.device("cpu"), settings)
    error = got[0]
    assert isinstance(error, RequestFailedError), repr(error)
    assert error.__cause__ is failure
    assert error.category == ("user" if isinstance(failure, SinkClosed) else "server")
    # 2 sequences: call 3 is sequence 0's second token; sequence 1 is not told that step's token
    assert calls == [(0, calls[0][1]), (1, calls[1][1]), (0, calls[2][1])], calls
    (want,) = sampler.sample_batch(model, [items[1]], tokenizer, torch.device("cpu"), settings)
    assert isinstance(got[1], ts.SampleResponse) and isinstance(want, ts.SampleResponse)
    assert [s.tokens for s in got[1].sequences] == [s.tokens for s in want.sequences]
    assert [s.stop_reason for s in got[1].sequences] == [s.stop_reason for s in want.sequences]
    assert max(len(s.tokens) for s in want.sequences) > 2, "the other request must outlive the stopped one"
    for g, w in zip(got[1].sequences, want.sequences, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
