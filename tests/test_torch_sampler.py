"""The torch backend's batched decode loop (``sampler.sample_batch``, ``decode.py``).

``sample_batch`` answers several requests (different adapters, prompt lengths, ``num_samples``,
``max_tokens``, stops, sampling parameters, seeds, prompt-logprob options) in one decode loop. With
a seed, every request's tokens must be exactly those it gets alone (a batch of one), and its
sampled logprobs, prompt logprobs and top-k prompt logprobs must agree with those within
``atol 1e-4`` (the ``fp32`` class). On x86 CPUs with MKL the loop is batch-invariant by design
(rows attend alone; matrix products from probed, packed weights), so there they must be bit-identical.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backend import SampleRequest, SamplerSpec
from tinker_std.backends.torch import TorchSettings, adapters, row_attention, sampler
from tinker_std.backends.torch.fast import packed
from tinker_std.backends.torch.models import BUILTIN_MODELS, builtin_path, load_causal_lm, load_tokenizer
from tinker_std.errors import BadRequestError, ContextLengthError
from tinker_std.types import LoraConfig, SampleResponse

from _support import sample_request as request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "tiny-llama"
CPU = torch.device("cpu")
ATOL = 1e-4
#: The fast paths as the environment sets them (``TINKER_STD_*``), as an engine would read them.
SETTINGS = TorchSettings.from_env()
#: Where the loop is batch-invariant bit for bit: x86 CPUs with oneDNN's packed products
#: (``fast/packed.py``, ``sampler.py``); without packing, MKL's GEMM is row-independent on some CPUs only.
BIT_EXACT = platform.machine() in ("x86_64", "AMD64") and packed.available() and SETTINGS.packed_weights


@pytest.fixture(scope="module", params=[MODEL, "tiny-qwen3"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any, SamplerSpec]]:
    """A tiny model with adapters ``a`` (attention + MLP) and ``b`` (also ``lm_head``), both with
    non-zero ``lora_B`` so that they really change the model, its tokenizer and a sampler spec."""
    name: str = request.param
    path = str(builtin_path(name, tmp_path_factory.getbasetemp() / "tinker-std-cache"))
    model, tokenizer = load_causal_lm(path, torch.float32, CPU), load_tokenizer(path)
    generator = torch.Generator().manual_seed(7)
    for adapter, lora in (("a", LoraConfig(rank=4, train_unembed=False)), ("b", LoraConfig(rank=8))):
        params = adapters.add_adapter(model, adapter, lora, seed=len(adapter))
        with torch.no_grad():
            for key, param in params.items():
                param.requires_grad_(False)
                if key.endswith("lora_B"):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    spec = SamplerSpec("s", name, vocab, BUILTIN_MODELS[name].max_context_length)
    yield model, tokenizer, spec


def alone(
    setup: tuple[Any, Any, SamplerSpec], item: sampler.SampleItem, settings: TorchSettings = SETTINGS
) -> SampleResponse:
    """``sample_batch`` on one item alone, as the engine samples a request that arrives alone."""
    model, tokenizer, _ = setup
    (response,) = sampler.sample_batch(model, [item], tokenizer, CPU, settings)
    assert isinstance(response, SampleResponse), repr(response)
    return response


def assert_same(got: SampleResponse, want: SampleResponse, label: str, exact: bool = BIT_EXACT) -> float:
    """Identical tokens and stop reasons; logprobs within ``ATOL``, or equal when ``exact``.
    Returns the largest difference."""
    assert len(got.sequences) == len(want.sequences), label
    if exact:
        assert [s.logprobs for s in got.sequences] == [s.logprobs for s in want.sequences], label
        assert got.prompt_logprobs == want.prompt_logprobs, label
        assert got.topk_prompt_logprobs == want.topk_prompt_logprobs, label
    worst = 0.0
    for j, (g, w) in enumerate(zip(got.sequences, want.sequences, strict=True)):
        assert g.tokens == w.tokens, f"{label} sequence {j}: tokens differ"
        assert g.stop_reason == w.stop_reason, f"{label} sequence {j}"
        worst = max(worst, float(np.abs(np.array(g.logprobs) - np.array(w.logprobs)).max()))
    assert (got.prompt_logprobs is None) == (want.prompt_logprobs is None), label
    if got.prompt_logprobs is not None and want.prompt_logprobs is not None:
        assert got.prompt_logprobs[0] is None and want.prompt_logprobs[0] is None
        diff = np.abs(np.array(got.prompt_logprobs[1:]) - np.array(want.prompt_logprobs[1:]))
        worst = max(worst, float(diff.max()))
    assert (got.topk_prompt_logprobs is None) == (want.topk_prompt_logprobs is None), label
    if got.topk_prompt_logprobs is not None and want.topk_prompt_logprobs is not None:
        for g_row, w_row in zip(got.topk_prompt_logprobs[1:], want.topk_prompt_logprobs[1:], strict=True):
            assert g_row is not None and w_row is not None
            assert [t for t, _ in g_row] == [t for t, _ in w_row], f"{label}: top-k ids differ"
            worst = max(worst, float(np.abs(np.array([v for _, v in g_row]) - np.array([v for _, v in w_row])).max()))
    assert worst <= ATOL, f"{label}: max |logprob diff| {worst:.2e}"
    return worst


def mixed_items(tokenizer: Any, spec: SamplerSpec) -> list[sampler.SampleItem]:
    """Requests of three adapters (base, ``a``, ``b``, interleaved), every option varied."""
    enc = tokenizer.encode
    eos = tokenizer.eos_token_id
    cases: list[tuple[str | None, SampleRequest]] = [
        ("a", request(enc("Once upon a time"), 4, max_tokens=12, stop=[], seed=11)),
        (None, request(enc("The cat"), 3, max_tokens=9, seed=12, temperature=0.7, top_k=5)),
        ("b", request(enc("Paris is the capital of"), 2, topk=3, include=True, max_tokens=7, seed=13, top_p=0.8)),
        ("a", request(enc("def add(a, b):\n"), 1, include=True, max_tokens=1, stop=[], seed=14)),
        ("b", request(enc("Hello"), 5, max_tokens=15, stop=["e", " t"], seed=15, temperature=1.3)),
        (None, request(enc("In 1969"), 6, max_tokens=16, stop=list(range(0, spec.vocab_size, 5)), seed=19)),
        (None, request(enc("0 1 2 3 4 5 6 7 8 9 10 11 12"), 2, topk=2, max_tokens=6, stop=[eos], seed=16)),
        ("a", request(enc("Monday, Tuesday"), 3, max_tokens=10, seed=17, temperature=0.0)),
        ("b", request(enc("The quick brown fox jumps"), 2, max_tokens=20, stop=[], seed=18, top_k=40, top_p=0.95)),
    ]
    return [sampler.SampleItem(req, spec, adapter) for adapter, req in cases]


def test_batch_gives_each_request_what_it_gets_alone(setup: tuple[Any, Any, SamplerSpec]) -> None:
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    want = [alone(setup, item) for item in items]
    got = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
    assert len(got) == len(items)
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert isinstance(g, SampleResponse), f"item {i}: {g!r}"
        worst = max(worst, assert_same(g, w, f"item {i}"))
    # the batch really mixed lengths and dropped rows at different steps
    lengths = {len(s.tokens) for r in want for s in r.sequences}
    assert len(lengths) >= 5, lengths
    reasons = [s.stop_reason for r in want for s in r.sequences]
    assert reasons.count("stop") >= 4 and reasons.count("length") >= 4, reasons
    print(f"batch vs alone: max |logprob diff| {worst:.2e}")


def test_single_adapter_batch_and_subsets(setup: tuple[Any, Any, SamplerSpec]) -> None:
    """One adapter at a time (activated, LoRA layers called directly: the base model, then ``b``,
    then the base model again), and the same requests in another order and in smaller groups, give
    the same answers; the LoRA layers are peft's own again afterwards."""
    model, tokenizer, spec = setup
    for adapter in (None, "b", None):
        items = [item for item in mixed_items(tokenizer, spec) if item.adapter == adapter]
        want = [alone(setup, item) for item in items]
        for group in (items, items[::-1], items[:1]):
            got = sampler.sample_batch(model, group, tokenizer, CPU, SETTINGS)
            order = [items.index(item) for item in group]
            for g, i in zip(got, order, strict=True):
                assert isinstance(g, SampleResponse)
                assert_same(g, want[i], f"adapter {adapter} item {i}")
        assert not any("forward" in vars(m) or "forward" in m._modules for m in model.modules())


def test_num_samples_does_not_change_a_sequence(setup: tuple[Any, Any, SamplerSpec]) -> None:
    """SMP-12 through ``sample``: sequence j is the same for num_samples 1, 3, 4 and 6 (filler rows
    close the batch to a multiple of 4 rows, so every row is computed the same way)."""
    _, tokenizer, spec = setup
    prompt = tokenizer.encode("She sells sea shells")
    runs = {
        n: alone(setup, sampler.SampleItem(request(prompt, n, max_tokens=10, stop=[], seed=8), spec, "b"))
        for n in (1, 3, 4, 6)
    }
    for n, response in runs.items():
        for j, seq in enumerate(response.sequences):
            reference = runs[6].sequences[j]
            assert seq.tokens == reference.tokens, (n, j)
            if BIT_EXACT:
                assert seq.logprobs == reference.logprobs, (n, j)
            else:
                np.testing.assert_allclose(seq.logprobs or [], reference.logprobs or [], rtol=0, atol=ATOL)


def test_padding_mask_fallback(setup: tuple[Any, Any, SamplerSpec]) -> None:
    """A model whose attention is not SDPA decodes the batch through a padding mask: same tokens,
    logprobs within tolerance."""
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)[:5]
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        want = [alone(setup, item) for item in items]
        got = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
    finally:
        model.config._attn_implementation = before
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert isinstance(g, SampleResponse)
        assert_same(g, w, f"item {i}", exact=False)
    assert model.config._attn_implementation == before


def test_adapters_differ(setup: tuple[Any, Any, SamplerSpec]) -> None:
    """The same seeded request through base, ``a`` and ``b`` in one batch: three different answers
    (so the comparisons above exercise the per-row adapters)."""
    model, tokenizer, spec = setup
    req = request(tokenizer.encode("Question: What colour is the sky?"), 2, max_tokens=12, stop=[], seed=3)
    items = [sampler.SampleItem(req, spec, a) for a in (None, "a", "b")]
    got = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
    logprobs = [tuple(r.sequences[0].logprobs or []) for r in got if isinstance(r, SampleResponse)]
    assert len(set(logprobs)) == 3


def test_invalid_items_fail_alone(setup: tuple[Any, Any, SamplerSpec]) -> None:
    model, tokenizer, spec = setup
    good = mixed_items(tokenizer, spec)[:3]
    context = spec.max_context_length
    bad = [
        sampler.SampleItem(request([], 1, max_tokens=4), spec, "a"),
        sampler.SampleItem(request([spec.vocab_size], 1, max_tokens=4), spec, None),
        sampler.SampleItem(request([1] * 10, 1, max_tokens=context), spec, "b"),
        sampler.SampleItem(request([1] * context, 1), spec, None),
    ]
    items = [bad[0], good[0], bad[1], good[1], bad[2], good[2], bad[3]]
    got = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
    assert isinstance(got[0], BadRequestError) and got[0].field == "prompt"
    assert isinstance(got[2], BadRequestError) and got[2].field == "prompt"
    assert isinstance(got[4], ContextLengthError) and got[4].field == "sampling_params.max_tokens"
    assert isinstance(got[6], ContextLengthError) and got[6].field == "prompt"
    for slot, item in ((1, good[0]), (3, good[1]), (5, good[2])):
        response = got[slot]
        assert isinstance(response, SampleResponse)
        assert_same(response, alone(setup, item), f"slot {slot}")
    assert all(isinstance(r, BadRequestError) for r in sampler.sample_batch(model, bad, tokenizer, CPU, SETTINGS))
    assert sampler.sample_batch(model, [], tokenizer, CPU, SETTINGS) == []


def test_unseeded_requests_in_a_batch(setup: tuple[Any, Any, SamplerSpec]) -> None:
    model, tokenizer, spec = setup
    items = [
        sampler.SampleItem(request(tokenizer.encode(text), 3, max_tokens=5, stop=[]), spec, adapter)
        for text, adapter in (("The cat", "a"), ("Once upon a time there", None))
    ]
    for response in sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS):
        assert isinstance(response, SampleResponse)
        assert [len(s.tokens) for s in response.sequences] == [5, 5, 5]
        assert all(0 <= t < spec.vocab_size for s in response.sequences for t in s.tokens)


def test_the_in_place_cache_equals_transformers_dynamic_cache(
    setup: tuple[Any, Any, SamplerSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kv_cache.growing_cache`` changes how keys and values are stored, not what the loop
    computes: the same requests decoded with transformers' ``DynamicCache`` give the same tokens
    and bit-identical logprobs (one request alone, and a batch that drops rows as they stop)."""
    from transformers.cache_utils import DynamicCache

    from tinker_std.backends.torch.fast import kv_cache

    model, tokenizer, spec = setup
    items = [
        sampler.SampleItem(request([5, 9, 14, 2, 33, 7], n=3, max_tokens=9, seed=4, temperature=1.0), spec, "a"),
        sampler.SampleItem(request([8, 1, 4], n=2, max_tokens=4, seed=5, temperature=0.8), spec, "b"),
        sampler.SampleItem(request(list(range(3, 20)), n=1, max_tokens=12, seed=6), spec, None),
    ]

    def run() -> list[SampleResponse]:
        with torch.no_grad():
            batch = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
        out = [alone(setup, items[0])]
        for response in batch:
            assert isinstance(response, SampleResponse)
            out.append(response)
        return out

    grown = run()
    calls: list[int] = []

    def dynamic(layers: int, reserve: int) -> DynamicCache:
        calls.append(reserve)
        return DynamicCache()

    monkeypatch.setattr(kv_cache, "growing_cache", dynamic)
    plain = run()
    if row_attention.supports_row_attention(model):
        assert calls, "the decode loop did not use the in-place cache"
    for k, (got, want) in enumerate(zip(grown, plain, strict=True)):
        for g, w in zip(got.sequences, want.sequences, strict=True):
            assert g.tokens == w.tokens, f"response {k}"
            assert g.logprobs == w.logprobs, f"response {k}"
