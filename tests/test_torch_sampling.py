"""Sampling on the torch backend (``TorchEngine.sample``): seeds, greedy, stops, logprobs.

Tolerances: sampled logprobs and prompt logprobs against a teacher-forced ``forward`` of the same
weights: ``atol 1e-4`` (the ``fp32`` class; measured differences are reported in the messages);
everything that must be a replay (same seed, same request; a fresh adapter vs the base model):
exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinker_std.backends.torch import TorchEngine
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, ContextLengthError
from tinker_std.types import TOPK_PAD_LOGPROB, TOPK_PAD_TOKEN, AdamParams, Datum, LoraConfig, ModelInput

from _support import sample_one
from _support import sample_request as request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    cache = tmp_path_factory.getbasetemp() / "tinker-std-cache"
    eng = TorchEngine(CheckpointStore(tmp_path_factory.mktemp("ckpt")), device="cpu", cache_dir=cache)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def tokenizer(engine: TorchEngine) -> Any:
    return engine.tokenizer(MODEL)


@pytest.fixture(scope="module")
def trained(engine: TorchEngine, tokenizer: Any) -> tuple[str, str]:
    """A training model taught to answer ``Hello, world!`` with EOS, and a snapshot sampler of it."""
    model_id = engine.create_model(MODEL, LoraConfig(rank=8, seed=0)).model_id
    tokens = [*tokenizer.encode("Hello, world!"), tokenizer.eos_token_id]
    data = [Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})]
    for _ in range(12):
        engine.forward_backward(model_id, data, "cross_entropy", {}, True)
        engine.optim_step(model_id, AdamParams(learning_rate=2e-2))
    return model_id, engine.create_sampler(model_id=model_id).sampler_id


def forward_logprobs(engine: TorchEngine, model_id: str, sequence: Sequence[int]) -> np.ndarray:
    """Teacher-forced logprobs of ``sequence[1:]``."""
    datum = Datum(
        model_input=ModelInput.from_ints(list(sequence[:-1])), loss_fn_inputs={"target_tokens": list(sequence[1:])}
    )
    out = engine.forward_backward(model_id, [datum], "cross_entropy", {}, False)
    return out.loss_fn_outputs[0]["logprobs"].to_numpy()


def test_seeded_sampling_is_reproducible_and_per_sequence(
    engine: TorchEngine, trained: tuple[str, str], tokenizer: Any
) -> None:
    _, sampler_id = trained
    prompt = tokenizer.encode("Once upon a time")
    params = {"max_tokens": 12, "stop": [], "seed": 1234, "temperature": 1.0}
    four = sample_one(engine, sampler_id, request(prompt, 4, **params)).sequences
    again = sample_one(engine, sampler_id, request(prompt, 4, **params)).sequences
    one = sample_one(engine, sampler_id, request(prompt, 1, **params)).sequences
    for a, b in zip(four, again, strict=True):
        assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert one[0].tokens == four[0].tokens
    np.testing.assert_allclose(one[0].logprobs, four[0].logprobs or [], rtol=0, atol=1e-5)
    assert len({tuple(s.tokens) for s in four}) == 4, "distinct sequences draw from distinct streams"
    other = sample_one(engine, sampler_id, request(prompt, 4, **{**params, "seed": 99})).sequences
    assert [s.tokens for s in other] != [s.tokens for s in four]


def test_greedy_is_the_argmax_of_the_forward_logits(
    engine: TorchEngine, trained: tuple[str, str], tokenizer: Any
) -> None:
    model_id, sampler_id = trained
    prompt = tokenizer.encode("The cat sat on")
    greedy = request(prompt, 2, max_tokens=10, stop=[], temperature=0.0, top_k=3)
    seqs = sample_one(engine, sampler_id, greedy).sequences
    assert seqs[0].tokens == seqs[1].tokens and seqs[0].stop_reason == "length" and len(seqs[0].tokens) == 10
    import torch

    from tinker_std.backends.torch.adapters import activate

    base = engine.bases.get(MODEL)
    activate(base.model, engine.training.models[model_id].adapter, trainable=False)
    with torch.no_grad():
        logits = base.model(torch.tensor([prompt + seqs[0].tokens])).logits[0]
    argmax = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert argmax == seqs[0].tokens


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.3, "top_p": 0.8},
        {"temperature": 0.0},
    ],
)
def test_sampled_logprobs_are_raw_forward_logprobs(
    engine: TorchEngine, trained: tuple[str, str], tokenizer: Any, params: dict[str, Any]
) -> None:
    model_id, sampler_id = trained
    prompt = tokenizer.encode("Paris is")
    worst = 0.0
    for seq in sample_one(engine, sampler_id, request(prompt, 3, max_tokens=16, stop=[], seed=5, **params)).sequences:
        assert seq.logprobs is not None and len(seq.logprobs) == len(seq.tokens) == 16
        want = forward_logprobs(engine, model_id, prompt + seq.tokens)[len(prompt) - 1 :]
        worst = max(worst, float(np.abs(np.array(seq.logprobs) - want).max()))
    assert worst <= 1e-4, f"sampled vs forward logprobs: max |diff| {worst:.2e}"


def test_stops(engine: TorchEngine, trained: tuple[str, str], tokenizer: Any) -> None:
    _, sampler_id = trained
    eos = tokenizer.eos_token_id
    hello = tokenizer.encode("Hello, world!")
    greedy = {"temperature": 0.0, "max_tokens": 5}
    # the adapter learned to end "Hello, world!" with EOS: the default stop
    (seq,) = sample_one(engine, sampler_id, request(hello, **greedy)).sequences
    assert seq.tokens == [eos] and seq.stop_reason == "stop"
    (seq,) = sample_one(engine, sampler_id, request(hello, **{**greedy, "max_tokens": 1})).sequences
    assert seq.tokens == [eos] and seq.stop_reason == "stop", "a stop at max_tokens is still a stop"
    # stop=[] disables EOS; an explicit list replaces it
    (seq,) = sample_one(engine, sampler_id, request(hello, **greedy, stop=[])).sequences
    assert seq.tokens[0] == eos and len(seq.tokens) == 5 and seq.stop_reason == "length"
    run = seq.tokens
    (seq,) = sample_one(engine, sampler_id, request(hello, **greedy, stop=[run[2]])).sequences
    assert seq.tokens == run[: run.index(run[2]) + 1] and seq.stop_reason == "stop"
    # stop strings: stop after the first token whose decoded completion contains the string
    prompt = tokenizer.encode("The quick")
    (long_run,) = sample_one(engine, sampler_id, request(prompt, temperature=0.0, max_tokens=12, stop=[])).sequences
    text = tokenizer.decode(long_run.tokens)
    needle = text[len(text) // 2 : len(text) // 2 + 2]
    assert needle.strip(), f"pick a visible stop string from {text!r}"
    expected = next(n for n in range(1, 13) if needle in tokenizer.decode(long_run.tokens[:n]))
    for stop in (needle, [needle, "never-there"]):
        (seq,) = sample_one(engine, sampler_id, request(prompt, temperature=0.0, max_tokens=12, stop=stop)).sequences
        assert seq.tokens == long_run.tokens[:expected] and seq.stop_reason == "stop"


def test_prompt_logprobs_and_topk(engine: TorchEngine, trained: tuple[str, str], tokenizer: Any) -> None:
    model_id, sampler_id = trained
    prompt = tokenizer.encode("The quick brown fox")
    response = sample_one(engine, sampler_id, request(prompt, max_tokens=1, include=True, topk=4))
    lps, tops = response.prompt_logprobs, response.topk_prompt_logprobs
    assert lps is not None and tops is not None and len(lps) == len(tops) == len(prompt)
    assert lps[0] is None and tops[0] is None
    want = forward_logprobs(engine, model_id, prompt)
    np.testing.assert_allclose(np.array(lps[1:], dtype=np.float64), want, rtol=0, atol=1e-4)
    for i, row in enumerate(tops[1:], start=1):
        assert row is not None and len(row) == 4
        values = [v for _, v in row]
        assert values == sorted(values, reverse=True)
        if prompt[i] in [t for t, _ in row]:
            assert dict(row)[prompt[i]] == pytest.approx(lps[i], abs=1e-6)
        assert row[0][1] >= (lps[i] or 0.0) - 1e-6
    plain = sample_one(engine, sampler_id, request(prompt, max_tokens=1))
    assert plain.prompt_logprobs is None and plain.topk_prompt_logprobs is None
    v = engine.bases.get(MODEL).vocab_size
    wide = sample_one(engine, sampler_id, request(prompt[:2], max_tokens=1, topk=v + 3)).topk_prompt_logprobs
    assert wide is not None and wide[1] is not None and len(wide[1]) == v + 3
    assert wide[1][v:] == [(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)] * 3
    assert sorted(t for t, _ in wide[1][:v]) == list(range(v))


def test_a_fresh_adapter_samples_like_the_base_model(engine: TorchEngine, tokenizer: Any) -> None:
    fresh = engine.create_model(MODEL, LoraConfig(rank=4, seed=3)).model_id
    snapshot = engine.create_sampler(model_id=fresh).sampler_id
    base = engine.create_sampler(base_model=MODEL).sampler_id
    prompt = tokenizer.encode("Monday, Tuesday")
    req = request(prompt, 3, include=True, topk=2, max_tokens=8, stop=[], seed=7, temperature=1.0)
    a, b = sample_one(engine, snapshot, req), sample_one(engine, base, req)
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert [s.logprobs for s in a.sequences] == [s.logprobs for s in b.sequences]
    assert a.prompt_logprobs == b.prompt_logprobs and a.topk_prompt_logprobs == b.topk_prompt_logprobs


def test_request_checks(engine: TorchEngine, trained: tuple[str, str]) -> None:
    _, sampler_id = trained
    v = engine.bases.get(MODEL).vocab_size
    with pytest.raises(ContextLengthError) as info:
        sample_one(engine, sampler_id, request([5] * 256))
    assert info.value.field == "prompt"
    with pytest.raises(ContextLengthError) as info:
        sample_one(engine, sampler_id, request([5] * 250, max_tokens=7))
    assert info.value.field == "sampling_params.max_tokens"
    seq = sample_one(engine, sampler_id, request([5] * 250, max_tokens=6, stop=[])).sequences[0]
    assert len(seq.tokens) == 6
    for prompt in ([], [5, v]):
        with pytest.raises(BadRequestError) as info:
            sample_one(engine, sampler_id, request(prompt))
        assert info.value.field == "prompt"


def test_builtin_models_listed_and_qwen3_samples(engine: TorchEngine, tmp_path: Path) -> None:
    names = [m.model_name for m in engine.supported_models()]
    assert names[:2] == ["tiny-llama", "tiny-qwen3"]
    sampler_id = engine.create_sampler(base_model="tiny-qwen3").sampler_id
    tok = engine.tokenizer("tiny-qwen3")
    seqs = sample_one(engine, sampler_id, request(tok.encode("Hello"), 2, max_tokens=5, stop=[], seed=0)).sequences
    assert [len(s.tokens) for s in seqs] == [5, 5]
