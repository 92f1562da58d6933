"""Sampling: results, stops, greedy decoding, seeds, prompt logprobs, snapshots (spec SMP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinker_std as ts
from tinker_std.conformance.helpers import (
    ADAM,
    forward_logprobs,
    probe_batch,
    sequence_datum,
)
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.reference import draw_rule_2, sequence_uniforms
from tinker_std.conformance.sampling_stats import check_draws, choose_scenarios, next_token_logprobs
from tinker_std.conformance.strategies import conformance_settings, sampling_params, token_sequences
from tinker_std.conformance.tolerances import assert_close, assert_replay

Factory = Callable[..., ts.TrainingClient]
GREEDY = ts.SamplingParams(temperature=0.0, max_tokens=8, stop=[])
#: Sequences per statistical sampling call: cheap on small vocabularies, and decisive (a mutant's
#: shifted category moves by far more than the Chernoff threshold of ~0.07 at this size).
N_DRAWS = 2000
DRAWS_PER_CALL = 250  #: sequences per ``sample`` request of a check, within LIM-3's default 256


def _trained_sampler(tc: ts.TrainingClient, v: int) -> ts.SamplingClient:
    tc.forward_backward(probe_batch(v, explicit=True), "cross_entropy")
    tc.optim_step(ADAM)
    return tc.save_weights_and_get_sampling_client().result()


def _prompt(v: int, n: int = 4, offset: int = 0) -> ts.ModelInput:
    return ts.ModelInput.from_ints([(17 * i + 3 + offset) % v for i in range(n)])


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in values], dtype=np.float64)


def stop_reached(tokens: list[int], stop: Any, tokenizer: ts.Tokenizer) -> bool:
    """Whether the completion ``tokens`` (all generated so far) triggers a stop (SMP-4..SMP-7)."""
    if not tokens:
        return False
    if stop is None:
        return tokenizer.eos_token_id is not None and tokens[-1] == tokenizer.eos_token_id
    if isinstance(stop, str):
        stop = [stop]
    ids = {s for s in stop if isinstance(s, int)}
    strings = [s for s in stop if isinstance(s, str)]
    if tokens[-1] in ids:
        return True
    return bool(strings) and any(s in tokenizer.decode(tokens) for s in strings)


@pytest.mark.spec("SMP-1", "SMP-3", "SMP-4", "SMP-5", "SMP-6", "SMP-7", "SMP-8", "SMP-9", "SMP-11")
def test_sampled_sequences_obey_lengths_stops_and_report_raw_logprobs(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    sc = _trained_sampler(make_training_client(), v)
    tokenizer = sc.get_tokenizer()

    @given(
        prompt=token_sequences(v, 1, 6),
        params=sampling_params(v),
        num_samples=st.integers(1, 3),
    )
    @conformance_settings
    def check(prompt: list[int], params: ts.SamplingParams, num_samples: int) -> None:
        response = sc.sample(ts.ModelInput.from_ints(prompt), num_samples, params).result()
        assert len(response.sequences) == num_samples, f"[SMP-1] {len(response.sequences)} sequences"
        assert response.prompt_logprobs is None, "[SMP-13] prompt_logprobs without include_prompt_logprobs"
        max_tokens = params.max_tokens or 0
        for j, seq in enumerate(response.sequences):
            assert seq.logprobs is not None and len(seq.logprobs) == len(seq.tokens), f"[SMP-1] sequence {j}"
            assert 1 <= len(seq.tokens) <= max_tokens, f"[SMP-1] sequence {j}: {len(seq.tokens)} tokens"
            for n in range(1, len(seq.tokens)):
                assert not stop_reached(seq.tokens[:n], params.stop, tokenizer), (
                    f"[SMP-8] sequence {j} continued after a stop at token {n}: {seq.tokens} (stop={params.stop!r})"
                )
            triggered = stop_reached(seq.tokens, params.stop, tokenizer)
            if triggered:
                assert seq.stop_reason == "stop", f"[SMP-9] ended by a stop but reason {seq.stop_reason!r}"
            else:
                assert seq.stop_reason == "length", f"[SMP-9] no stop reached but reason {seq.stop_reason!r}"
                assert len(seq.tokens) == max_tokens, f"[SMP-9] 'length' with {len(seq.tokens)} < {max_tokens} tokens"
            full = sc.compute_logprobs(ts.ModelInput.from_ints(prompt + seq.tokens)).result()
            assert_close(seq.logprobs, _floats(full[len(prompt) :]), "token", "SMP-3", what=f"sequence {j} logprobs")

    check()


@pytest.mark.spec("SMP-16", "SMP-13", "SMP-3")
def test_compute_logprobs_agrees_with_forward(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = make_training_client()
    sc = _trained_sampler(tc, v)

    @given(seq=token_sequences(v, 2, 14))
    @conformance_settings
    def check(seq: list[int]) -> None:
        prompt = ts.ModelInput.from_ints(seq)
        lps = sc.compute_logprobs(prompt).result()
        assert len(lps) == len(seq) and lps[0] is None, f"[SMP-16] {len(lps)} entries, first {lps[0]!r}"
        assert all(x is not None for x in lps[1:]), "[SMP-16] only entry 0 may be None"
        expected = forward_logprobs(tc, [sequence_datum(seq, explicit=True)])[0]
        assert_close(_floats(lps[1:]), expected, "token", "SMP-16", what="compute_logprobs[1:] vs forward")
        response = sc.sample(prompt, 1, ts.SamplingParams(max_tokens=1), include_prompt_logprobs=True).result()
        assert response.prompt_logprobs is not None and len(response.prompt_logprobs) == len(seq), "[SMP-13] length"
        assert response.prompt_logprobs[0] is None, "[SMP-13] entry 0 must be None"
        assert_close(_floats(response.prompt_logprobs[1:]), _floats(lps[1:]), "token", "SMP-13", what="prompt lps")

    check()


@pytest.mark.spec("SMP-10", "SMP-11")
def test_temperature_zero_is_argmax(conformance_backend: ConformanceBackend, make_training_client: Factory) -> None:
    backend = conformance_backend
    v = backend.vocab_size
    sc = _trained_sampler(make_training_client(), v)
    prompt = _prompt(v)
    greedy = sc.sample(prompt, 2, GREEDY).result()
    tokens = greedy.sequences[0].tokens
    assert greedy.sequences[1].tokens == tokens, "[SMP-10] temperature 0 must be deterministic"
    prefix = prompt.to_ints()
    allowance = backend.tolerance.token_atol
    for n, token in enumerate(tokens[:4]):
        logprobs = next_token_logprobs(sc, prefix + tokens[:n], v, backend.capabilities, "SMP-10")
        best = float(np.max(logprobs))
        tied = [
            int(t) for t in np.flatnonzero(logprobs >= best - 2 * allowance - backend.tolerance.token_rtol * abs(best))
        ]
        assert token in tied, (
            f"[SMP-10] position {n}: greedy token {token}, argmax {tied[0]} (within tolerance: {tied})"
        )
        if len(tied) == 1 or backend.deterministic:
            exact = [int(t) for t in np.flatnonzero(logprobs == best)]
            assert len(tied) > 1 or token == exact[0], f"[SMP-10] position {n}: greedy {token}, lowest argmax {exact}"
    variants = [
        ts.SamplingParams(temperature=0.0, max_tokens=8, stop=[], top_k=3, top_p=0.5),
        ts.SamplingParams(temperature=1.3, max_tokens=8, stop=[], top_k=1),
        ts.SamplingParams(temperature=0.7, max_tokens=8, stop=[], top_p=1e-9),
    ]
    for params in variants:
        got = sc.sample(prompt, 1, params).result().sequences[0].tokens
        assert got == tokens, f"[SMP-10/SMP-11] {params!r} gave {got}, greedy is {tokens}"


@pytest.mark.spec("SMP-5", "SMP-6", "SMP-8", "SMP-9")
def test_stop_tokens_and_strings(conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient) -> None:
    v = conformance_backend.vocab_size
    tokenizer = base_sampler.get_tokenizer()
    for offset in range(3):
        prompt = _prompt(v, 5, offset)
        greedy = base_sampler.sample(prompt, 1, GREEDY).result().sequences[0].tokens
        assert len(greedy) == 8 and base_sampler.sample(prompt, 1, GREEDY).result().sequences[0].stop_reason == "length"
        for j in (0, 2, 5):
            stop_token = greedy[j]
            first = greedy.index(stop_token)
            params = ts.SamplingParams(temperature=0.0, max_tokens=8, stop=[stop_token])
            seq = base_sampler.sample(prompt, 1, params).result().sequences[0]
            assert seq.tokens == greedy[: first + 1], f"[SMP-6] stop={stop_token}: {seq.tokens} vs {greedy}"
            assert seq.stop_reason == "stop", f"[SMP-9] reason {seq.stop_reason!r}"
            # the stop token is also the max_tokens-th token: still "stop"
            params = ts.SamplingParams(temperature=0.0, max_tokens=first + 1, stop=[stop_token])
            seq = base_sampler.sample(prompt, 1, params).result().sequences[0]
            assert seq.stop_reason == "stop", f"[SMP-9] a stop on the last allowed token gave {seq.stop_reason!r}"
            text = tokenizer.decode(greedy[: j + 1])
            if not text:
                continue
            expected_n = next(n for n in range(1, 9) if text in tokenizer.decode(greedy[:n]))
            for stop in (text, [text]):
                got = (
                    base_sampler.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=8, stop=stop))
                    .result()
                    .sequences[0]
                )
                assert got.tokens == greedy[:expected_n], f"[SMP-5] stop={stop!r}: {got.tokens} vs {greedy}"
                assert got.stop_reason == "stop", f"[SMP-9] reason {got.stop_reason!r}"


@pytest.mark.spec("SMP-4", "SMP-7", "SMP-8", "SMP-9")
def test_eos_stops_by_default_and_only_by_default(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = training_client()
    tokenizer = tc.get_tokenizer()
    eos = tokenizer.eos_token_id
    prompt = _prompt(v, 4)
    if eos is None:
        seq = tc.save_weights_and_get_sampling_client().result().sample(prompt, 1, GREEDY).result().sequences[0]
        assert len(seq.tokens) == 8 and seq.stop_reason == "length", "[SMP-4] no EOS: stop only at max_tokens"
        return
    # teach the adapter to answer the prompt with EOS
    tokens = prompt.to_ints()
    datum = sequence_datum([*tokens, eos], [0.0] * (len(tokens) - 1) + [1.0])
    sc = None
    for _ in range(60):
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(ADAM.model_copy(update={"learning_rate": 5e-2}))
        sc = tc.save_weights_and_get_sampling_client().result()
        if sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=1, stop=[])).result().sequences[
            0
        ].tokens == [eos]:
            break
    assert sc is not None
    first = sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=1, stop=[])).result().sequences[0]
    if first.tokens != [eos]:
        pytest.fail(f"[SMP-4] cannot check: 60 steps of lr 5e-2 did not teach the adapter to emit EOS ({eos}) greedily")
    default = sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=4)).result().sequences[0]
    assert default.tokens == [eos] and default.stop_reason == "stop", f"[SMP-4] [SMP-8] stop=None gave {default}"
    assert default.logprobs is not None and len(default.logprobs) == 1, "[SMP-8] the EOS logprob must be returned"
    disabled = sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=4, stop=[])).result().sequences[0]
    assert len(disabled.tokens) == 4 and disabled.tokens[0] == eos, f"[SMP-7] stop=[] gave {disabled.tokens}"
    assert disabled.stop_reason == "length", f"[SMP-7] stop=[] gave reason {disabled.stop_reason!r}"
    other = next(t for t in range(v) if t != eos and t not in disabled.tokens)
    replaced = sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=4, stop=[other])).result()
    assert replaced.sequences[0].tokens == disabled.tokens, "[SMP-7] a given stop list must replace the EOS stop"
    listed = sc.sample(prompt, 1, ts.SamplingParams(temperature=0.0, max_tokens=1, stop=[other, eos])).result()
    assert listed.sequences[0].stop_reason == "stop", "[SMP-9] EOS listed and generated as the last token"


@pytest.mark.spec("SMP-2")
def test_max_tokens_defaults_to_the_rest_of_the_context(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    v, c = conformance_backend.vocab_size, conformance_backend.max_context_length
    prompt = ts.ModelInput.from_ints([(i * 7 + 1) % v for i in range(c - 3)])
    seq = base_sampler.sample(prompt, 1, ts.SamplingParams(temperature=0.0, stop=[])).result().sequences[0]
    assert len(seq.tokens) == 3 and seq.stop_reason == "length", f"[SMP-2] {len(seq.tokens)} tokens, {seq.stop_reason}"


@pytest.mark.requires("seeded_sampling")
@pytest.mark.spec("SMP-12")
def test_seeded_sampling_is_reproducible_per_sequence(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    sc = _trained_sampler(make_training_client(), v)

    @given(
        seed=st.integers(0, 2**31), params=sampling_params(v, max_tokens=8, seed=False), prompt=token_sequences(v, 1, 5)
    )
    @conformance_settings
    def check(seed: int, params: ts.SamplingParams, prompt: list[int]) -> None:
        seeded = params.model_copy(update={"seed": seed})
        model_input = ts.ModelInput.from_ints(prompt)
        four = sc.sample(model_input, 4, seeded).result().sequences
        again = sc.sample(model_input, 4, seeded).result().sequences
        one = sc.sample(model_input, 1, seeded).result().sequences
        for j in range(4):
            assert four[j].tokens == again[j].tokens, f"[SMP-12] sequence {j} differs between identical calls"
            assert_replay(
                four[j].logprobs,
                again[j].logprobs,
                "token",
                "SMP-12",
                what=f"sequence {j} logprobs",
                deterministic=True,
            )
        assert one[0].tokens == four[0].tokens, "[SMP-12] sequences[0] depends on num_samples"

    check()
    hot = ts.SamplingParams(temperature=1.0, max_tokens=8, stop=[], seed=1234)
    sequences = sc.sample(_prompt(v), 4, hot).result().sequences
    assert len({tuple(s.tokens) for s in sequences}) > 1, "[SMP-12] distinct sequences must use distinct streams"


@pytest.mark.requires("seeded_sampling")
@pytest.mark.spec("SMP-20")
@pytest.mark.parametrize(
    "params",
    [
        ts.SamplingParams(temperature=1.0, max_tokens=1, stop=[], seed=11),
        ts.SamplingParams(temperature=0.7, max_tokens=1, stop=[], seed=12, top_k=5),
        ts.SamplingParams(temperature=1.3, max_tokens=1, stop=[], seed=13, top_p=0.8),
    ],
    ids=["plain", "top_k", "top_p"],
)
def test_seeded_draws_follow_draw_rule_2(
    conformance_backend: ConformanceBackend, make_training_client: Factory, params: ts.SamplingParams
) -> None:
    """The first token of each seeded sequence is the one draw rule 2 picks from the backend's own
    full distribution at that position (``conformance.reference.draw_rule_2``, float64). A ``u``
    that falls within the tolerance of a CDF boundary could go either way and is not judged. A
    mismatch is diagnosed: draws that fit the rule computed in float32, or at temperature 1,
    say so."""
    backend = conformance_backend
    v = backend.vocab_size
    sc = _trained_sampler(make_training_client(), v)
    seed = params.seed
    assert seed is not None
    judged, wrong = 0, []
    for offset in range(4):
        prompt = _prompt(v, 5, offset).to_ints()
        logp = torch.from_numpy(next_token_logprobs(sc, prompt, v, backend.capabilities, "SMP-20"))
        sequences = sc.sample(ts.ModelInput.from_ints(prompt), 6, params).result().sequences
        for j, seq in enumerate(sequences):
            u = sequence_uniforms(seed, j, 1)[0]
            want, margin = draw_rule_2(logp, params, u)
            if margin < 1e-4:
                continue
            judged += 1
            if seq.tokens[0] != want:
                wrong.append((logp, j, seq.tokens[0], want))
    if wrong:
        fits_fp32 = all(
            draw_rule_2(lp, params, sequence_uniforms(seed, j, 1, torch.float32)[0], torch.float32)[0] == got
            for lp, j, got, _ in wrong
        )
        fits_t1 = all(
            draw_rule_2(lp, params.model_copy(update={"temperature": 1.0}), sequence_uniforms(seed, j, 1)[0])[0] == got
            for lp, j, got, _ in wrong
        )
        hint = (
            "; they match draw rule 2 computed in float32 (uniforms, softmax and CDF): the seeded draw must run "
            "in float64"
            if fits_fp32
            else "; they match draw rule 2 at temperature 1: the temperature looks ignored"
            if fits_t1
            else ""
        )
        _, j, got, want = wrong[0]
        raise AssertionError(
            f"[SMP-20] {len(wrong)}/{judged} seeded draws differ from draw rule 2 (first: sequence {j} drew "
            f"{got}, the rule gives {want}){hint}"
        )
    assert judged >= 12, f"[SMP-20] only {judged} draws were far enough from a CDF boundary to judge"


@pytest.mark.spec("SMP-10", "SMP-11", "SMP-1")
def test_unseeded_draws_follow_the_temperature_and_the_filters(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    """Unseeded sampling, judged statistically on every backend (``conformance.sampling_stats``).

    The reference is the backend's own next-token distribution (its raw logprobs, within the
    class's per-element tolerance). Three checks of ``N_DRAWS`` one-token sequences each: temperature
    0.5 with no filter (SMP-10), temperature 1.3 with a ``top_k`` and 0.8 with a ``top_p`` (SMP-11)
    chosen away from ties, each pooled from unseeded requests of ``DRAWS_PER_CALL`` (LIM-3 allows 256),
    which draw independently. A drawn token that the filters remove under every distribution within
    tolerance fails at once; otherwise each category's count is compared with the exact interval
    of its probability by a Chernoff bound. False-failure probability: at most
    ``ALPHA_CALL = 1e-6 / MAX_CALLS`` per check (union bound over categories and sides), so at most
    1e-6 per run for the suite's ``MAX_CALLS`` statistical checks, whatever the distribution.
    """
    backend = conformance_backend
    v = backend.vocab_size
    prompt = _prompt(v, 5, 1)
    logprobs = next_token_logprobs(base_sampler, prompt.to_ints(), v, backend.capabilities, "SMP-10")
    for check in choose_scenarios(logprobs):
        calls = [base_sampler.sample(prompt, DRAWS_PER_CALL, check.params) for _ in range(N_DRAWS // DRAWS_PER_CALL)]
        sequences = [s for call in calls for s in call.result().sequences]
        assert len(sequences) == N_DRAWS, f"[SMP-1] {len(sequences)} sequences from {len(calls)} x {DRAWS_PER_CALL}"
        assert all(len(s.tokens) == 1 for s in sequences), "[SMP-1] max_tokens=1 must give one token per sequence"
        check_draws([s.tokens[0] for s in sequences], logprobs, check)


@pytest.mark.spec("SMP-6", "SMP-8", "SMP-9")
def test_unseeded_sampling_stops_at_the_first_stop_token(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    """Temperature 1, no seed, the two most likely first tokens as stop tokens: every sequence ends
    right after its first stop token with reason ``"stop"``, and only there (a certain property of
    every draw). That some sequence stops is required only when the stop tokens' first-token
    probability is at least 0.1 (0.095 within the bf16 tolerance): a correct backend misses all
    200 with probability at most 0.905**200 < 2e-9, inside the suite's 1e-6 budget."""
    backend = conformance_backend
    v = backend.vocab_size
    prompt = _prompt(v, 5, 2)
    logprobs = next_token_logprobs(base_sampler, prompt.to_ints(), v, backend.capabilities, "SMP-6")
    stops = [int(t) for t in np.argsort(-logprobs, kind="stable")[:2]]
    params = ts.SamplingParams(temperature=1.0, max_tokens=4, stop=stops, seed=None, top_k=-1, top_p=1.0)
    sequences = base_sampler.sample(prompt, 200, params).result().sequences
    for j, seq in enumerate(sequences):
        hits = [n for n, t in enumerate(seq.tokens) if t in stops]
        if hits:
            assert hits[0] == len(seq.tokens) - 1, f"[SMP-8] sequence {j} continued after stop token: {seq.tokens}"
            assert seq.stop_reason == "stop", f"[SMP-9] sequence {j} ended on a stop token with {seq.stop_reason!r}"
        else:
            assert len(seq.tokens) == 4 and seq.stop_reason == "length", f"[SMP-6] sequence {j}: {seq}"
    assert any(s.stop_reason == "stop" for s in sequences) or float(np.exp(logprobs[stops]).sum()) < 0.1, (
        "[SMP-6] no sequence of 200 stopped although the stop tokens are likely first tokens"
    )


@pytest.mark.requires("topk_prompt_logprobs")
@pytest.mark.spec("SMP-17")
def test_top_k_prompt_logprobs(conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient) -> None:
    v = conformance_backend.vocab_size
    prompt = _prompt(v, 6)
    for k in (1, 5):
        response = base_sampler.sample(
            prompt, 1, ts.SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=k
        ).result()
        rows, lps = response.topk_prompt_logprobs, response.prompt_logprobs
        assert rows is not None and lps is not None and len(rows) == prompt.length, "[SMP-17] one row per position"
        assert rows[0] is None, "[SMP-17] entry 0 must be None"
        for i, row in enumerate(rows[1:], start=1):
            assert row is not None and len(row) == k, f"[SMP-17] row {i} has {row and len(row)} entries, expected {k}"
            keys = [(-lp, t) for t, lp in row]
            assert keys == sorted(keys), f"[SMP-17] row {i} not sorted by logprob desc, id asc: {row}"
            target = prompt.to_ints()[i]
            value = lps[i]
            assert value is not None and value <= row[0][1] + 1e-6, f"[SMP-17] row {i}: prompt token beats the top 1"
            for t, lp in row:
                if t == target:
                    assert_close(lp, value, "token", "SMP-17", what=f"row {i}: top-k entry of the prompt token")
    plain = base_sampler.sample(prompt, 1, ts.SamplingParams(max_tokens=1)).result()
    assert plain.topk_prompt_logprobs is None, "[SMP-17] k = 0 must give None"
    if v < 4096:
        wide = base_sampler.sample(prompt, 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=v + 3).result()
        row = wide.topk_prompt_logprobs[1] if wide.topk_prompt_logprobs else None
        assert row is not None and len(row) == v + 3, "[SMP-17] rows are padded to k when V < k"
        assert row[-3:] == [(0, -99999.0)] * 3, f"[SMP-17] padding {row[-3:]}"
        assert np.isclose(np.logaddexp.reduce([lp for _, lp in row[:v]]), 0.0, atol=1e-4), "[SMP-17] V entries sum to 1"


@pytest.mark.spec("SMP-14", "ORD-13")
def test_a_snapshot_sampler_does_not_move(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    v = conformance_backend.vocab_size
    probe = probe_batch(v, explicit=True)
    seq = [*probe[0].model_input.to_ints(), probe[0].loss_fn_inputs["target_tokens"].to_numpy().tolist()[-1]]
    tc = training_client()
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM)
    at_snapshot = tc.forward([sequence_datum(seq, explicit=True)])
    snapshot = tc.save_weights_and_get_sampling_client()  # captured here, whatever runs later
    later = [tc.forward_backward(probe, "cross_entropy"), tc.optim_step(ADAM), tc.optim_step(ADAM)]
    sc = snapshot.result()
    for f in later:
        f.result()
    first = sc.compute_logprobs(ts.ModelInput.from_ints(seq)).result()
    expected = at_snapshot.result().loss_fn_outputs[0]["logprobs"].to_numpy()
    assert_close(_floats(first[1:]), expected, "token", "ORD-13", what="snapshot vs forward at its position")
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM).result()
    again = sc.compute_logprobs(ts.ModelInput.from_ints(seq)).result()
    assert_replay(_floats(again[1:]), _floats(first[1:]), "token", "SMP-14", what="snapshot after more training")
    newer = tc.save_weights_and_get_sampling_client().result().compute_logprobs(ts.ModelInput.from_ints(seq)).result()
    assert not np.array_equal(_floats(newer[1:]), _floats(first[1:])), "a new snapshot should see the new weights"


@pytest.mark.spec("SMP-18", "LORA-2")
def test_a_fresh_adapter_behaves_like_the_base_model(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    backend = conformance_backend
    v = backend.vocab_size
    tc, other = training_client(seed=123), training_client(seed=456, rank=8)
    snapshot = tc.save_weights_and_get_sampling_client().result()
    for datum in probe_batch(v, explicit=True):
        seq = [*datum.model_input.to_ints(), datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()[-1]]
        prompt = ts.ModelInput.from_ints(seq)
        base = _floats(base_sampler.compute_logprobs(prompt).result())
        fwd = forward_logprobs(tc, [datum])[0]
        # across APIs (float32 forward vs compute_logprobs floats): within tolerance; same API: a replay
        assert_close(fwd, base[1:], "token", "LORA-2", what="fresh adapter (B = 0) forward vs base compute_logprobs")
        assert_replay(forward_logprobs(other, [datum])[0], fwd, "token", "SMP-18", what="fresh adapters, other seed")
        assert_replay(
            _floats(snapshot.compute_logprobs(prompt).result())[1:],
            base[1:],
            "token",
            "SMP-18",
            what="fresh adapter snapshot vs base",
        )
    if backend.supports("seeded_sampling"):
        params = ts.SamplingParams(temperature=1.0, max_tokens=6, stop=[], seed=7)
        prompt = _prompt(v)
        a = snapshot.sample(prompt, 2, params).result().sequences
        b = base_sampler.sample(prompt, 2, params).result().sequences
        assert [s.tokens for s in a] == [s.tokens for s in b], "[SMP-18] same seed, same tokens as the base model"


@pytest.mark.spec("SMP-15", "LORA-6", "ERR-4")
def test_creating_samplers_and_clients_for_unknown_models(
    conformance_backend: ConformanceBackend, service: ts.ServiceClient
) -> None:
    base = conformance_backend.base_model
    with pytest.raises(ts.BadRequestError):
        service.create_sampling_client().result()
    with pytest.raises(ts.NotFoundError):  # both given: model_path is loaded (SMP-15, spec 0.2)
        service.create_sampling_client(model_path="tinker://r/weights/x", base_model=base).result()
    with pytest.raises(ts.NotFoundError):
        service.create_sampling_client(base_model="no-such/model-xyz").result()
    with pytest.raises(ts.NotFoundError) as err:
        service.create_lora_training_client(base_model="no-such/model-xyz", rank=4).result()
    assert base in str(err.value), f"[ERR-4] message must list served models: {err.value}"
