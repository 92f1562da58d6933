"""Spec 0.2's SDK surface in process: partial prompt scoring, refusals by name, samplers from a
checkpoint with its base model named too (SDK-1, SDK-4, SDK-5, SMP-15)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, probe_batch
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close

Factory = Callable[..., ts.TrainingClient]


@pytest.mark.spec("SDK-4", "SMP-13", "SMP-16")
def test_prompt_logprobs_last_n_scores_only_the_tail(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    prompt = ts.ModelInput.from_ints([1 % v, 7 % v, 42 % v, 99 % v, 3 % v, 64 % v])
    full = base_sampler.compute_logprobs(prompt).result()
    for n in (1, 3, 5):
        tail = base_sampler.compute_logprobs(prompt, prompt_logprobs_last_n=n).result()
        assert tail[: len(full) - n] == [None] * (len(full) - n), f"[SDK-4] entries before the last {n}: {tail}"
        assert_close(tail[-n:], full[-n:], "token", "SDK-4", what=f"last {n} prompt logprobs")
        sampled = base_sampler.sample(
            prompt, 1, ts.SamplingParams(max_tokens=1), include_prompt_logprobs=True, prompt_logprobs_last_n=n
        ).result()
        assert sampled.prompt_logprobs is not None and sampled.prompt_logprobs[: len(full) - n] == [None] * (
            len(full) - n
        ), f"[SDK-4] sample(prompt_logprobs_last_n={n}) {sampled.prompt_logprobs}"
    params = ts.SamplingParams(max_tokens=1)
    bad: list[tuple[Callable[[], Any], str]] = [
        (lambda: base_sampler.compute_logprobs(prompt, prompt_logprobs_last_n=0), "0"),
        (lambda: base_sampler.compute_logprobs(prompt, prompt_logprobs_last_n=len(full)), "P"),
        (lambda: base_sampler.sample(prompt, 1, params, prompt_logprobs_last_n=2), "without prompt logprobs"),
    ]
    for call, what in bad:
        with pytest.raises(ts.BadRequestError) as err:
            call()
        assert err.value.field == "prompt_logprobs_last_n", f"[SDK-4] {what}: field {err.value.field!r}"


@pytest.mark.requires("topk_sample_logprobs")
@pytest.mark.spec("SDK-6", "SMP-3")
def test_topk_sample_logprobs_are_the_raw_distribution_each_token_was_drawn_from(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    prompt = [1 % v, 7 % v, 42 % v, 99 % v]
    k = 3
    for params in (
        ts.SamplingParams(max_tokens=3, temperature=0.0, stop=[]),
        ts.SamplingParams(max_tokens=3, seed=4, stop=[]),
    ):
        out = base_sampler.sample(ts.ModelInput.from_ints(prompt), 2, params, topk_sample_logprobs=k).result()
        for seq in out.sequences:
            assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens), (
                "[SDK-6] one row per token"
            )
            for t, row in enumerate(seq.topk_logprobs):
                assert row is not None and len(row) == k, f"[SDK-6] row {t}: {row}"
                values = [lp for _, lp in row]
                assert values == sorted(values, reverse=True), f"[SDK-6] row {t} not sorted: {row}"
                context = prompt + seq.tokens[:t]
                for token, lp in row:  # each pair is the raw logprob of that token after the context
                    ref = base_sampler.compute_logprobs(ts.ModelInput.from_ints([*context, token])).result()[-1]
                    assert_close(lp, ref, "token", "SDK-6", what=f"top-k logprob of {token} at sampled position {t}")
                if params.temperature == 0.0:
                    assert row[0][0] == seq.tokens[t], "[SDK-6] greedy: the sampled token is the top-1 pair"
    plain = base_sampler.sample(ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=2)).result()
    assert plain.sequences[0].topk_logprobs is None, "[SDK-6] not asked for: None"
    with pytest.raises(ts.BadRequestError) as err:
        base_sampler.sample(
            ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=2), topk_sample_logprobs=-1
        )
    assert err.value.field == "topk_sample_logprobs", f"[SDK-6] field {err.value.field!r}"


@pytest.mark.requires("target_prompt_logprobs")
@pytest.mark.spec("SDK-7", "SMP-16")
def test_target_prompt_logprobs_are_the_logprobs_of_the_named_ids(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    prompt = [1 % v, 7 % v, 42 % v, 99 % v, 3 % v]
    # row i names ids scored at prompt position i + 1: the prompt's own token, two others, a -1 cell
    rows = [[prompt[i + 1], (5 * i + 2) % v, -1, (prompt[i + 1] + 1) % v] for i in range(len(prompt) - 1)]
    request = ts.TensorData(data=[t for row in rows for t in row], dtype="int64", shape=[len(rows), 4])
    out = base_sampler.sample(
        ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=1), target_prompt_logprobs=request
    ).result()
    got = out.target_prompt_logprobs
    assert got is not None, "[SDK-7] asked for target_prompt_logprobs, got None"
    assert got.dtype == "float32" and got.shape == [len(rows), 4], f"[SDK-7] {got.dtype} {got.shape}"
    values = [got.data[r * 4 : (r + 1) * 4] for r in range(len(rows))]
    for i, row in enumerate(rows):
        assert values[i][2] == 0.0, f"[SDK-7] a -1 cell at row {i} is {values[i][2]}, not 0.0"
        for j in (0, 1, 3):  # reference: compute_logprobs of the prompt prefix followed by that id
            ref = base_sampler.compute_logprobs(ts.ModelInput.from_ints([*prompt[: i + 1], row[j]])).result()[-1]
            assert_close(values[i][j], ref, "token", "SDK-7", what=f"target logprob [{i}, {j}] (id {row[j]})")
    # the SDK's CSR form of the same ids, the -1 cells unlisted: the same result (unlisted cells request nothing)
    listed = [[(j, t) for j, t in enumerate(row) if t != -1] for row in rows]
    crow = [0]
    for cells in listed:
        crow.append(crow[-1] + len(cells))
    sparse = ts.TensorData(
        data=[t for cells in listed for _, t in cells],
        dtype="int64",
        shape=[len(rows), 4],
        sparse_crow_indices=crow,
        sparse_col_indices=[j for cells in listed for j, _ in cells],
    )
    got_sparse = (
        base_sampler.sample(
            ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=1), target_prompt_logprobs=sparse
        )
        .result()
        .target_prompt_logprobs
    )
    assert got_sparse is not None and got_sparse.shape == [len(rows), 4], f"[SDK-7] sparse t: {got_sparse}"
    for i in range(len(rows)):
        assert got_sparse.data[i * 4 + 2] == 0.0, f"[SDK-7] an unlisted CSR cell at row {i} is scored"
        for j in (0, 1, 3):
            assert_close(got_sparse.data[i * 4 + j], values[i][j], "token", "SDK-7", what=f"sparse t cell [{i}, {j}]")
    plain = base_sampler.sample(ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=1)).result()
    assert plain.target_prompt_logprobs is None, "[SDK-7] not asked for: None"
    bad = {
        "rows": ts.TensorData(data=[1] * 3, dtype="int64", shape=[3, 1]),  # len(prompt) - 1 is 4
        "id": ts.TensorData(data=[v] * 4, dtype="int64", shape=[4, 1]),
        "dtype": ts.TensorData(data=[1.0] * 4, dtype="float32", shape=[4, 1]),
    }
    for what, tensor in bad.items():
        with pytest.raises(ts.BadRequestError) as err:
            base_sampler.sample(
                ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=1), target_prompt_logprobs=tensor
            )
        assert err.value.field == "target_prompt_logprobs", f"[SDK-7] bad {what}: field {err.value.field!r}"


@pytest.mark.requires("prompt_alt_tokens")
@pytest.mark.spec("SDK-8", "SMP-16")
def test_prompt_alt_tokens_are_draws_from_each_prompt_position(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    prompt = [1 % v, 7 % v, 42 % v, 99 % v, 3 % v]
    n = 400
    model_input = ts.ModelInput.from_ints(prompt)
    out = base_sampler.sample(model_input, 1, ts.SamplingParams(max_tokens=1, seed=5), prompt_alt_tokens_k=n).result()
    alts = out.prompt_alt_tokens
    assert alts is not None, "[SDK-8] asked for prompt_alt_tokens, got None"
    shape = [len(prompt) - 1, n]
    assert alts.tokens.dtype == "int64" and alts.tokens.shape == shape, f"[SDK-8] tokens {alts.tokens.shape}"
    assert alts.logprobs.dtype == "float32" and alts.logprobs.shape == shape, f"[SDK-8] logprobs {alts.logprobs.shape}"
    for i in range(len(prompt) - 1):
        row = [int(t) for t in alts.tokens.data[i * n : (i + 1) * n]]
        lps = alts.logprobs.data[i * n : (i + 1) * n]
        counts = {t: row.count(t) for t in set(row)}
        for token in sorted(counts, key=lambda t: -counts[t])[:3]:  # reference: the prefix scored with that id
            ref = base_sampler.compute_logprobs(ts.ModelInput.from_ints([*prompt[: i + 1], token])).result()[-1]
            got = lps[row.index(token)]
            assert_close(got, ref, "token", "SDK-8", what=f"logprob of draw {token} at prompt position {i + 1}")
            p = math.exp(ref)  # type: ignore[arg-type]  # temperature 1: its frequency is p within 5 binomial sigmas
            bound = 5 * math.sqrt(p * (1 - p) / n) + 1 / n
            assert abs(counts[token] / n - p) <= bound, (
                f"[SDK-8] position {i + 1}: token {token} drawn {counts[token]}/{n} times, p = {p:.4f}"
            )
        greedy = (
            base_sampler.sample(model_input, 1, ts.SamplingParams(max_tokens=1, temperature=0.0), prompt_alt_tokens_k=2)
            .result()
            .prompt_alt_tokens
        )
        assert greedy is not None, "[SDK-8] temperature 0: None"
        pair = greedy.tokens.data[2 * i : 2 * i + 2]
        best = max(lps)
        assert pair[0] == pair[1] and greedy.logprobs.data[2 * i] >= best - 1e-4, (
            f"[SDK-8] temperature 0 at position {i + 1}: {pair} is not the argmax (logprob "
            f"{greedy.logprobs.data[2 * i]} < {best} of a temperature-1 draw)"
        )
    plain = base_sampler.sample(model_input, 1, ts.SamplingParams(max_tokens=1)).result()
    assert plain.prompt_alt_tokens is None, "[SDK-8] not asked for: None"
    with pytest.raises(ts.BadRequestError) as err:
        base_sampler.sample(model_input, 1, ts.SamplingParams(max_tokens=1), prompt_alt_tokens_k=-1)
    assert err.value.field == "prompt_alt_tokens_k", f"[SDK-8] field {err.value.field!r}"


class _NotAdam:
    """Stands for an optimizer config tinker-std does not implement (e.g. the SDK's Dimuon)."""


@pytest.mark.spec("SDK-5", "SDK-1", "ORD-5")
def test_sdk_features_outside_the_spec_are_refused_by_name(
    conformance_backend: ConformanceBackend,
    training_client: Factory,
    base_sampler: ts.SamplingClient,
    service: ts.ServiceClient,
) -> None:
    v = conformance_backend.vocab_size
    tc = training_client()
    probe = probe_batch(v)
    before = tc.forward(probe).result().metrics
    refused: dict[str, Callable[[], Any]] = {
        "kind": lambda: tc.save_weights_and_get_sampling_client(kind="live"),
        "record_stability_info": lambda: tc.save_weights_and_get_sampling_client(record_stability_info="yes"),  # type: ignore[arg-type]
        "optimizer": lambda: service.create_lora_training_client(
            base_model=conformance_backend.base_model,
            rank=4,
            optimizer=_NotAdam(),  # type: ignore[arg-type]
        ),
    }
    for name, call in refused.items():
        with pytest.raises(ts.BadRequestError) as err:  # raised by the call itself (ORD-5)
            call()
        assert err.value.field == name, f"[SDK-5] {name}: field {err.value.field!r} ({err.value})"
    tc.optim_step(ADAM).result()  # the client still works, and nothing refused touched it
    after_step = tc.forward(probe).result().metrics
    assert after_step == before, "[SDK-1] a refused call changed the client's state"


@pytest.mark.requires("checkpoint_management")
@pytest.mark.spec("SMP-15", "CKPT-8")
def test_a_sampler_from_a_checkpoint_may_name_its_base_model(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    v = conformance_backend.vocab_size
    tc = training_client()
    tc.forward_backward(probe_batch(v), "cross_entropy")
    tc.optim_step(ADAM).result()
    path = tc.save_weights_for_sampler("smp15").result().path
    prompt = ts.ModelInput.from_ints([1 % v, 7 % v, 42 % v, 99 % v])
    alone = service.create_sampling_client(model_path=path).result()
    both = service.create_sampling_client(model_path=path, base_model=conformance_backend.base_model).result()
    assert_close(
        both.compute_logprobs(prompt).result()[1:],
        alone.compute_logprobs(prompt).result()[1:],
        "token",
        "SMP-15",
        what="model_path with its base model named samples the checkpoint",
    )
    with pytest.raises(ts.BadRequestError) as err:
        service.create_sampling_client(model_path=path, base_model="no-such/model-xyz").result()
    assert err.value.field == "base_model", f"[SMP-15] field {err.value.field!r}"
    with pytest.raises(ts.BadRequestError):
        service.create_sampling_client()


@pytest.mark.spec("SDK-2", "SDK-3")
def test_sequence_ids_are_distinct_and_recording_changes_no_result(
    conformance_backend: ConformanceBackend, service: ts.ServiceClient, training_client: Factory
) -> None:
    """SDK-2 and the capability-free half of SDK-3, on every backend: every sampled sequence has a
    non-empty id unique within the ``ServiceClient``; ``record_stability_info`` takes a bool (else a
    ``BadRequestError`` naming it) and a recording sampler returns what a plain one does (greedy
    draws, so the comparison needs no seed). What is recorded is checked by the
    ``loss:stable_reinforce`` tests (LOSS-16..19)."""
    v = conformance_backend.vocab_size
    tc = training_client()
    path = tc.save_weights_for_sampler("sdk-2").result().path
    prompt = ts.ModelInput.from_ints([3 % v, 17 % v, 29 % v, 5 % v])
    greedy = ts.SamplingParams(max_tokens=4, temperature=0.0, stop=[])
    plain = service.create_sampling_client(model_path=path).result()
    recording = service.create_sampling_client(model_path=path, record_stability_info=True).result()
    snapshot = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    ids: list[str] = []
    outputs = []
    for sampler in (plain, recording, snapshot, plain):
        out = sampler.sample(prompt, 3, greedy).result()
        outputs.append(out)
        ids.extend(seq.sequence_id for seq in out.sequences)
    assert all(isinstance(i, str) and i for i in ids), f"[SDK-2] empty sequence ids: {ids}"
    assert len(set(ids)) == len(ids), f"[SDK-2] sequence ids repeat within one ServiceClient: {ids}"
    for got, what in ((outputs[1], "create_sampling_client"), (outputs[2], "save_weights_and_get_sampling_client")):
        for a, b in zip(outputs[0].sequences, got.sequences, strict=True):
            assert a.tokens == b.tokens, f"[SDK-3] recording ({what}) changed the tokens: {a.tokens} vs {b.tokens}"
            assert_close(b.logprobs or [], a.logprobs or [], "token", "SDK-3", what=f"logprobs with recording ({what})")
    for call in (
        lambda: service.create_sampling_client(model_path=path, record_stability_info="yes"),  # type: ignore[arg-type]
        lambda: tc.create_sampling_client(path, record_stability_info=1),  # type: ignore[arg-type]
    ):
        with pytest.raises(ts.BadRequestError) as err:
            call()  # type: ignore[no-untyped-call]  # mypy marks a lambda with a refused argument untyped
        assert err.value.field == "record_stability_info", f"[SDK-3] field {err.value.field!r}"
