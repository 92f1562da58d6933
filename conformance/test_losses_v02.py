"""Spec 0.2 losses: ``stable_reinforce`` over recorded samples, provenance spans, and gspo's
default ratio mask on the cookbook's datum layout (LOSS-7, LOSS-16..LOSS-19, SDK-2, SDK-3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, probe_batch, state_arrays
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close

Factory = Callable[..., ts.TrainingClient]
P, S = ts.PromptProvenanceSpan, ts.SampledProvenanceSpan


def _prompt(v: int) -> list[int]:
    return [1 % v, 7 % v, 42 % v, 99 % v, 3 % v]


def _trained(make: Factory, backend: ConformanceBackend, steps: int = 1) -> ts.TrainingClient:
    tc = make()
    for _ in range(steps):
        tc.forward_backward(probe_batch(backend.vocab_size), "cross_entropy")
        tc.optim_step(ADAM).result()
    return tc


def _rollout(sampler: ts.SamplingClient, prompt: list[int], n: int = 2) -> list[ts.SampledSequence]:
    params = ts.SamplingParams(max_tokens=4, seed=3, stop=[], temperature=1.0)
    return sampler.sample(ts.ModelInput.from_ints(prompt), n, params).result().sequences


def _cookbook_datum(
    prompt: Sequence[int], seq: ts.SampledSequence, advantage: float, logprobs: bool = True, spans: bool = True
) -> ts.Datum:
    """The datum tinker-cookbook's ``rl/data_processing.py`` builds for one single-turn rollout:
    full = prompt + sampled, input = full[:-1], targets = full[1:], A and q zero on the prompt."""
    full = list(prompt) + list(seq.tokens)
    pad = len(prompt) - 1
    inputs: dict[str, ts.types.TensorLike] = {
        "target_tokens": full[1:],
        "advantages": [0.0] * pad + [advantage] * len(seq.tokens),
    }
    if logprobs:
        inputs["logprobs"] = [0.0] * pad + list(seq.logprobs or [])
    datum = ts.Datum(model_input=ts.ModelInput.from_ints(full[:-1]), loss_fn_inputs=inputs)
    if not spans:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[P(sequence_id=sid, length=len(prompt)), S(sequence_id=sid, length=len(seq.tokens) - 1)],
        loss_fn_inputs=[P(sequence_id=sid, offset=1, length=pad), S(sequence_id=sid, length=len(seq.tokens))],
    )


def _reference(lp: np.ndarray, q: np.ndarray, adv: np.ndarray, mask: np.ndarray, kl: float, cap: float) -> float:
    r = np.exp((lp - q) * mask)
    return float(np.sum((-np.minimum(r, cap) * adv * lp + kl * (r - 1.0 - np.log(r))) * mask))


@pytest.mark.requires("loss:stable_reinforce")
@pytest.mark.spec("LOSS-16", "LOSS-19", "SDK-2", "SDK-3", "LOSS-1", "TOL-3")
def test_stable_reinforce_is_the_formula_of_the_recorded_logprobs(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    tc = _trained(training_client, conformance_backend)
    sampler = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    prompt = _prompt(v)
    seqs = _rollout(sampler, prompt, 3)
    ids = [s.sequence_id for s in seqs] + [s.sequence_id for s in _rollout(sampler, prompt, 2)]
    assert all(ids) and len(set(ids)) == len(ids), f"[SDK-2] sequence ids must be non-empty and distinct: {ids}"
    tc.forward_backward(probe_batch(v), "cross_entropy")
    tc.optim_step(ts.AdamParams(learning_rate=5e-2)).result()  # off-policy now: r != 1
    data = [_cookbook_datum(prompt, s, a) for s, a in zip(seqs, (1.0, -0.5, 2.0), strict=True)]
    for config in ({"kl_coeff": 0.5, "ratio_cap": 1.02}, None):
        out = tc.forward(data, "stable_reinforce", config).result()
        kl, cap = (0.5, 1.02) if config else (0.0, 2.0)
        expected, slack = 0.0, 0.0
        for d, s, o in zip(data, seqs, out.loss_fn_outputs, strict=True):
            lp = np.asarray(o["logprobs"].tolist(), dtype=np.float64)
            pad = len(prompt) - 1
            mask = np.r_[np.zeros(pad), np.ones(len(s.tokens))]
            q = np.r_[np.zeros(pad), np.asarray(s.logprobs, dtype=np.float32).astype(np.float64)]
            adv = np.asarray(d.loss_fn_inputs["advantages"].tolist())
            expected += _reference(lp, q, adv, mask, kl, cap)
            slack += 2 * 2.0**-23 * float(np.sum(np.abs(adv * lp)) + np.sum(np.abs(lp))) * (1 + kl)
        assert_close(out.metrics["loss:sum"], expected, "sum", "LOSS-16", what=f"config {config}", slack=slack)
        # LOSS-19: the recorded values are used whether or not the datum carries logprobs
        bare = [_cookbook_datum(prompt, s, a, logprobs=False) for s, a in zip(seqs, (1.0, -0.5, 2.0), strict=True)]
        again = tc.forward(bare, "stable_reinforce", config).result()
        assert again.metrics["loss:sum"] == out.metrics["loss:sum"], "[LOSS-19] a logprobs input changed the loss"


@pytest.mark.requires("loss:stable_reinforce", "introspection")
@pytest.mark.spec("LOSS-16", "LOSS-14")
def test_stable_reinforce_gradient_is_truncated_importance_sampling(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """With ``kl_coeff = 0`` and every ratio below ``ratio_cap`` the gradient is exactly
    ``importance_sampling``'s on the same datum without spans (both are ``-r·A·∇lp``)."""
    v = conformance_backend.vocab_size
    prompt = _prompt(v)
    a, b = training_client(seed=5), training_client(seed=5)
    sampler = a.save_weights_and_get_sampling_client(record_stability_info=True).result()
    seqs = _rollout(sampler, prompt, 2)
    data = [_cookbook_datum(prompt, s, adv) for s, adv in zip(seqs, (1.0, -1.0), strict=True)]
    plain = [_cookbook_datum(prompt, s, adv, spans=False) for s, adv in zip(seqs, (1.0, -1.0), strict=True)]
    a.forward_backward(data, "stable_reinforce", {"ratio_cap": 100.0}).result()
    b.forward_backward(plain, "importance_sampling").result()
    ga = {k: x for k, x in state_arrays(a).items() if k.startswith("grads/")}
    gb = {k: x for k, x in state_arrays(b).items() if k.startswith("grads/")}
    assert ga.keys() == gb.keys() and ga, "[LOSS-16] gradient keys"
    assert any(np.any(x != 0) for x in ga.values()), "[LOSS-16] no gradient at all"
    for key in ga:
        assert_close(ga[key], gb[key], "token", "LOSS-16", what=f"gradient {key} vs importance_sampling")


@pytest.mark.requires("loss:stable_reinforce")
@pytest.mark.spec("LOSS-18", "LOSS-19", "LOSS-17", "SDK-3")
def test_stable_reinforce_refuses_provenance_it_cannot_check(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    prompt = _prompt(v)
    tc = training_client()
    recorded = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    unrecorded = tc.save_weights_and_get_sampling_client().result()
    seq = _rollout(recorded, prompt, 1)[0]
    other = _rollout(unrecorded, prompt, 1)[0]
    good = _cookbook_datum(prompt, seq, 1.0)
    sid = seq.sequence_id
    n_in, n_out = good.model_input.length, len(seq.tokens) + len(prompt) - 1
    wrong_token = (prompt[1] + 1) % v

    def variant(**update: object) -> ts.Datum:
        return good.model_copy(update=update)

    inputs = dict(good.loss_fn_inputs)
    cases: dict[str, tuple[ts.Datum, str]] = {
        "no provenance": (_cookbook_datum(prompt, seq, 1.0, spans=False), "data[0].loss_fn_input_spans"),
        "not recorded": (_cookbook_datum(prompt, other, 1.0), "data[0].model_input_spans[0].sequence_id"),
        "unknown id": (
            variant(model_input_spans=[P(sequence_id="no-such-seq", length=len(prompt)), *good.model_input_spans[1:]]),  # type: ignore[index]
            "data[0].model_input_spans[0].sequence_id",
        ),
        "beyond the prompt": (
            variant(
                model_input_spans=[
                    P(sequence_id=sid, offset=1, length=len(prompt)),
                    S(sequence_id=sid, length=n_in - len(prompt)),
                ]
            ),
            "data[0].model_input_spans[0]",
        ),
        "input token differs": (
            ts.Datum(
                model_input=ts.ModelInput.from_ints([prompt[0], wrong_token, *good.model_input.to_ints()[2:]]),
                loss_fn_inputs=inputs,
                model_input_spans=good.model_input_spans,
                loss_fn_input_spans=good.loss_fn_input_spans,
            ),
            "data[0].model_input_spans[0]",
        ),
        "sampled target differs": (
            variant(
                loss_fn_inputs={
                    **inputs,
                    "target_tokens": ts.TensorData(
                        data=[*inputs["target_tokens"].data[:-1], (seq.tokens[-1] + 1) % v], dtype="int64"
                    ),
                }
            ),
            "data[0].loss_fn_input_spans[1]",
        ),
        "advantage on a prompt position": (
            variant(
                loss_fn_inputs={
                    **inputs,
                    "advantages": ts.TensorData(data=[0.5, *inputs["advantages"].data[1:]], dtype="float32"),
                }
            ),
            "data[0].loss_fn_inputs.advantages",
        ),
        "drifted logprobs": (
            variant(
                loss_fn_inputs={
                    **inputs,
                    "logprobs": ts.TensorData(
                        data=[*inputs["logprobs"].data[:-1], inputs["logprobs"].data[-1] - 0.01], dtype="float32"
                    ),
                }
            ),
            "data[0].loss_fn_inputs.logprobs",
        ),
        "spans do not tile": (
            variant(
                loss_fn_input_spans=[
                    P(sequence_id=sid, offset=1, length=len(prompt) - 2),
                    S(sequence_id=sid, length=n_out - len(prompt) + 1),
                ]
            ),
            "data[0].loss_fn_input_spans",
        ),
    }
    before = tc.forward([good], "stable_reinforce").result().metrics["loss:sum"]
    for name, (datum, field) in cases.items():
        with pytest.raises(ts.BadRequestError) as err:  # raised by the call itself: nothing was queued
            tc.forward_backward([datum], "stable_reinforce")
        assert err.value.field == field, (
            f"[LOSS-18] {name}: field {err.value.field!r}, expected {field!r} ({err.value})"
        )
    after = tc.forward([good], "stable_reinforce").result().metrics["loss:sum"]
    assert before == after, "[LOSS-18] a refused request changed state"


@pytest.mark.spec("LOSS-17")
def test_provenance_spans_must_tile_for_every_loss(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    v = conformance_backend.vocab_size
    prompt = _prompt(v)
    seq = _rollout(base_sampler, prompt, 1)[0]
    tc = training_client()
    with_spans = _cookbook_datum(prompt, seq, 1.0)  # names an unrecorded sequence: only stable_reinforce reads it
    plain = _cookbook_datum(prompt, seq, 1.0, spans=False)
    assert tc.forward([with_spans], "importance_sampling").result().metrics == (
        tc.forward([plain], "importance_sampling").result().metrics
    ), "[LOSS-17] spans changed an importance_sampling result"
    short = with_spans.model_copy(update={"model_input_spans": with_spans.model_input_spans[:1]})  # type: ignore[index]
    with pytest.raises(ts.BadRequestError) as err:
        tc.forward_backward([plain, short], "importance_sampling")
    assert err.value.field == "data[1].model_input_spans", f"[LOSS-17] field {err.value.field!r}"
    with pytest.raises(ValueError):
        ts.Datum(model_input=plain.model_input, loss_fn_inputs=plain.loss_fn_inputs, model_input_spans=[])


@pytest.mark.requires("loss:gspo")
@pytest.mark.spec("LOSS-7")
def test_gspo_without_a_mask_takes_the_ratio_over_the_sampled_positions(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """The cookbook's ``rl/train.py`` sends gspo datums without ``sequence_ratio_mask``: the
    result must equal the datum with the mask over the sampled tokens, and carry a real gradient."""
    v = conformance_backend.vocab_size
    prompt = _prompt(v)
    tc = _trained(training_client, conformance_backend)
    sampler = tc.save_weights_and_get_sampling_client().result()
    seqs = _rollout(sampler, prompt, 2)
    tc.forward_backward(probe_batch(v), "cross_entropy")
    tc.optim_step(ADAM).result()
    plain = [_cookbook_datum(prompt, s, a, spans=False) for s, a in zip(seqs, (1.0, -1.0), strict=True)]
    pad = len(prompt) - 1
    masked = [
        d.model_copy(update={"loss_fn_inputs": {**d.loss_fn_inputs, "sequence_ratio_mask": ts.TensorData(
            data=[0.0] * pad + [1.0] * (d.model_input.length - pad), dtype="float32")}})
        for d in plain
    ]  # fmt: skip
    config = {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0}
    a = tc.forward(plain, "gspo", config).result()
    b = tc.forward(masked, "gspo", config).result()
    assert_close(
        a.metrics["loss:sum"], b.metrics["loss:sum"], "sum", "LOSS-7", what="no mask vs the sampled-token mask"
    )
    # a real gradient: the loss is -sum(s*A) with s the sequence ratio over the sampled tokens, |s*A| ~ |A|
    lps = [np.asarray(o["logprobs"].tolist()) for o in a.loss_fn_outputs]
    expected = 0.0
    for d, lp in zip(plain, lps, strict=True):
        q = np.asarray(d.loss_fn_inputs["logprobs"].tolist())
        adv = np.asarray(d.loss_fn_inputs["advantages"].tolist())
        s = float(np.exp(np.mean((lp - q)[pad:])))
        expected += float(-np.sum(np.minimum(s * adv, np.clip(s, 0.5, 2.0) * adv)))
    assert_close(a.metrics["loss:sum"], expected, "sum", "LOSS-7", what="sequence ratio over the sampled tokens")
    # ... and the same, real, gradient: twin clients, one step each, equal gradient norms
    norms = []
    for data in (plain, masked):
        twin = training_client(seed=11)
        twin.forward_backward(data, "gspo", config).result()
        norms.append(twin.optim_step(ADAM).result().metrics["grad_norm:max"])  # type: ignore[index]
    assert norms[0] > 1e-3, f"[LOSS-7] no gradient from the cookbook's gspo datums: {norms}"
    assert_close(norms[0], norms[1], "sum", "LOSS-7", what="gradient norm without the mask vs with it")
