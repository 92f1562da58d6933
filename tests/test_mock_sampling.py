"""The mock backend's samplers, driven directly: snapshots, seeds, logprobs, stop rules, top-k/top-p and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mock_backend_support import (
    MODEL,
    PROMPT,
    TOKENIZER,
    adapter_of,
    base_sampler,
    datum,
    make_backend,
    new_model,
    reference_logprobs,
    run,
    sample,
    text_data,
    train,
)

from tinker_std.backends.mock import EOS_TOKEN_ID, MockBackend, base_weights, forward
from tinker_std.backends.mock.sampler import choose_token, prompt_scores
from tinker_std.errors import BadRequestError, ContextLengthError
from tinker_std.types import TOPK_PAD_LOGPROB, TOPK_PAD_TOKEN, LoraConfig, ParsedCheckpointTinkerPath, SamplingParams


@pytest.fixture
def backend(tmp_path: Path) -> MockBackend:
    return make_backend(tmp_path)


# -- samplers ----------------------------------------------------------------------------------


def test_sampler_snapshot_does_not_move(backend: MockBackend) -> None:
    model_id = new_model(backend)
    train(backend, model_id, text_data("snapshot"), steps=2, lr=0.05)
    snapshot = run(backend.create_sampler(model_id=model_id)).sampler_id
    path = ParsedCheckpointTinkerPath.build("run4", "sampler", "s")
    run(backend.save_weights_for_sampler(model_id, path, overwrite=False))
    from_path = run(backend.create_sampler(model_path=path)).sampler_id
    before = sample(backend, snapshot, prompt_logprobs=True, max_tokens=8, seed=1)
    assert sample(backend, from_path, prompt_logprobs=True, max_tokens=8, seed=1).model_dump(
        exclude={"sequences": {0: {"sequence_id"}}}
    ) == before.model_dump(exclude={"sequences": {0: {"sequence_id"}}})
    train(backend, model_id, text_data("move the weights a lot"), steps=3, lr=0.5)
    after = sample(backend, snapshot, prompt_logprobs=True, max_tokens=8, seed=1)
    assert after.prompt_logprobs == before.prompt_logprobs
    assert after.sequences[0].tokens == before.sequences[0].tokens
    moved = sample(
        backend, run(backend.create_sampler(model_id=model_id)).sampler_id, prompt_logprobs=True, max_tokens=1
    )
    assert moved.prompt_logprobs != before.prompt_logprobs


def test_seeded_sampling_is_reproducible_and_per_sequence(backend: MockBackend) -> None:
    sampler_id = base_sampler(backend)
    four = sample(backend, sampler_id, num_samples=4, max_tokens=12, seed=42, stop=[])
    again = sample(backend, sampler_id, num_samples=4, max_tokens=12, seed=42, stop=[])
    two = sample(backend, sampler_id, num_samples=2, max_tokens=12, seed=42, stop=[])
    assert [s.tokens for s in four.sequences] == [s.tokens for s in again.sequences]
    assert [s.logprobs for s in four.sequences[:2]] == [s.logprobs for s in two.sequences]
    assert [s.tokens for s in four.sequences[:2]] == [s.tokens for s in two.sequences]
    assert len({tuple(s.tokens) for s in four.sequences}) == 4  # sequences use different streams
    assert len({s.sequence_id for s in four.sequences + again.sequences}) == 8
    other = sample(backend, sampler_id, num_samples=1, max_tokens=12, seed=43, stop=[])
    assert other.sequences[0].tokens != four.sequences[0].tokens
    unseeded = [sample(backend, sampler_id, max_tokens=12, stop=[]).sequences[0].tokens for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_sampled_logprobs_equal_forward_logprobs(backend: MockBackend) -> None:
    lora = LoraConfig(rank=4, seed=9)
    model_id = run(backend.create_model(MODEL, lora)).model_id
    train(backend, model_id, text_data("some training text"), steps=2, lr=0.05)
    sampler_id = run(backend.create_sampler(model_id=model_id)).sampler_id
    for params in ({"temperature": 1.0}, {"temperature": 0.7, "top_k": 20, "top_p": 0.9}, {"temperature": 0.0}):
        seq = sample(backend, sampler_id, max_tokens=20, seed=5, stop=[], **params).sequences[0]
        assert len(seq.tokens) == 20 and seq.stop_reason == "length" and seq.logprobs is not None
        full = PROMPT + seq.tokens
        logp = torch.log_softmax(forward(base_weights(MODEL), full, adapter_of(backend, model_id, lora)), -1)
        positions = np.arange(len(PROMPT) - 1, len(full) - 1)
        expected = logp.numpy()[positions, seq.tokens]
        np.testing.assert_allclose(seq.logprobs, expected, rtol=0, atol=1e-12)
        out = run(backend.forward_backward(model_id, [datum(full)], "cross_entropy", {}, False))
        np.testing.assert_allclose(
            out.loss_fn_outputs[0]["logprobs"].to_numpy()[positions], seq.logprobs, rtol=0, atol=1e-6
        )
        if params["temperature"] == 0.0:  # greedy: every token is the argmax
            assert seq.tokens == logp[positions].argmax(-1).tolist()


def test_stop_semantics(backend: MockBackend) -> None:
    sampler_id = base_sampler(backend)
    greedy = sample(backend, sampler_id, temperature=0.0, max_tokens=30, stop=[]).sequences[0]
    g = greedy.tokens
    assert len(g) == 30 and greedy.stop_reason == "length"
    # list[int]: stop at the first occurrence, stop token included.
    first = g.index(g[6])
    seq = sample(backend, sampler_id, temperature=0.0, max_tokens=30, stop=[g[6], 999]).sequences[0]
    assert seq.tokens == g[: first + 1] and seq.stop_reason == "stop"
    # a stop token that is also the max_tokens-th token still reports "stop".
    seq = sample(backend, sampler_id, temperature=0.0, max_tokens=first + 1, stop=[g[6]]).sequences[0]
    assert seq.tokens == g[: first + 1] and seq.stop_reason == "stop"
    # strings: stop once the decoded completion contains one.
    needle = TOKENIZER.decode(g[10:12])
    expected_end = next(i for i in range(1, 31) if needle in TOKENIZER.decode(g[:i]))
    for stop in (needle, ["never-appears", needle]):
        seq = sample(backend, sampler_id, temperature=0.0, max_tokens=30, stop=stop).sequences[0]
        assert seq.tokens == g[:expected_end] and seq.stop_reason == "stop"
    # max_tokens None: the rest of the context window.
    long_prompt = [65] * 250
    seq = sample(backend, sampler_id, prompt=long_prompt, temperature=0.0, stop=[]).sequences[0]
    assert len(seq.tokens) == 6 and seq.stop_reason == "length"


def test_eos_stops_only_by_default(backend: MockBackend) -> None:
    prompt = TOKENIZER.encode("say eos")
    model_id = new_model(backend)
    train(backend, model_id, [datum([*prompt, EOS_TOKEN_ID])], steps=15, lr=0.02)
    sampler_id = run(backend.create_sampler(model_id=model_id)).sampler_id
    seq = sample(backend, sampler_id, prompt=prompt, temperature=0.0, max_tokens=5).sequences[0]
    assert seq.tokens == [EOS_TOKEN_ID] and seq.stop_reason == "stop"
    seq = sample(backend, sampler_id, prompt=prompt, temperature=0.0, max_tokens=5, stop=[EOS_TOKEN_ID]).sequences[0]
    assert seq.tokens == [EOS_TOKEN_ID] and seq.stop_reason == "stop"
    for stop in ([], "never-appears", [1000]):
        seq = sample(backend, sampler_id, prompt=prompt, temperature=0.0, max_tokens=3, stop=stop).sequences[0]
        assert seq.tokens[0] == EOS_TOKEN_ID and len(seq.tokens) == 3 and seq.stop_reason == "length"


def test_prompt_logprobs_and_topk(backend: MockBackend) -> None:
    sampler_id = base_sampler(backend)
    response = sample(backend, sampler_id, max_tokens=1, prompt_logprobs=True, topk=5)
    expected = reference_logprobs(PROMPT, {}, 1.0)
    lps, tops = response.prompt_logprobs, response.topk_prompt_logprobs
    assert lps is not None and tops is not None and len(lps) == len(tops) == len(PROMPT)
    assert lps[0] is None and tops[0] is None
    got = np.array(lps[1:], dtype=np.float64)
    np.testing.assert_allclose(got, expected[np.arange(len(PROMPT) - 1), PROMPT[1:]], rtol=0, atol=1e-12)
    for i, row in enumerate(tops[1:]):
        assert row is not None and len(row) == 5
        ids = [t for t, _ in row]
        assert ids == np.argsort(-expected[i], kind="stable")[:5].tolist()
        np.testing.assert_allclose([v for _, v in row], expected[i, ids], rtol=0, atol=1e-12)
    plain = sample(backend, sampler_id, max_tokens=1)
    assert plain.prompt_logprobs is None and plain.topk_prompt_logprobs is None
    padded = sample(backend, sampler_id, max_tokens=1, topk=300).topk_prompt_logprobs
    assert padded is not None and padded[1] is not None and len(padded[1]) == 300
    assert padded[1][258:] == [(TOPK_PAD_TOKEN, TOPK_PAD_LOGPROB)] * 42
    assert sorted(t for t, _ in padded[1][:258]) == list(range(258))


def test_ties_break_towards_lower_ids() -> None:
    logits = torch.zeros(3, 6, dtype=torch.float64)
    logits[:, 4] = 1.0
    _, tops = prompt_scores(logits, [0, 1, 2], include=False, topk=3)
    assert tops is not None and [t for t, _ in tops[1] or []] == [4, 0, 1]
    greedy = SamplingParams(temperature=0.0)
    assert choose_token(torch.tensor([0.0, 2.0, 2.0], dtype=torch.float64), greedy, torch.Generator()) == 1


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)

    def draws(**params: Any) -> list[int]:
        return [choose_token(logits, SamplingParams(**params), gen) for _ in range(400)]

    assert set(draws(top_k=1)) == {0}
    assert set(draws(top_p=0.5)) == {0}  # 0.5 alone reaches top_p
    assert set(draws(top_p=0.6)) == {0, 1}
    assert set(draws(top_k=2)) == {0, 1}
    # top_p applies to the renormalised top-k distribution: top-2 is (0.625, 0.375).
    assert set(draws(top_k=2, top_p=0.6)) == {0}
    assert set(draws(top_k=3, top_p=0.9)) == {0, 1, 2}  # top-3: 0.526 + 0.316 < 0.9
    counts = np.bincount(draws(), minlength=4) / 400
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.08)


def test_context_length_and_prompt_checks(backend: MockBackend) -> None:
    with pytest.raises(ContextLengthError):
        run(backend.forward_backward(new_model(backend), [datum([65] * 258)], "cross_entropy", {}, False))
    sampler_id = base_sampler(backend)
    with pytest.raises(ContextLengthError) as info:
        sample(backend, sampler_id, prompt=[65] * 256)
    assert info.value.field == "prompt"
    with pytest.raises(ContextLengthError) as info:
        sample(backend, sampler_id, prompt=[65] * 250, max_tokens=7)
    assert info.value.field == "sampling_params.max_tokens"
    assert len(sample(backend, sampler_id, prompt=[65] * 250, max_tokens=6, stop=[]).sequences[0].tokens) == 6
    for prompt in ([], [65, 258]):
        with pytest.raises(BadRequestError) as info:
            sample(backend, sampler_id, prompt=prompt)
        assert info.value.field == "prompt"
