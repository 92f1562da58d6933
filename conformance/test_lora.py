"""LoRA adapters: initialisation, seeds, ranks, trained families, info (spec LORA)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import (
    ADAM,
    forward_logprobs,
    logprobs_of,
    probe_batch,
    rl_datum,
    sequence_datum,
    snapshot,
    state_arrays,
)
from tinker_std.conformance.lora_probe import c_allowance, first_step, probe_params
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.sampling_stats import next_token_logprobs
from tinker_std.conformance.tolerances import assert_close, assert_mapping_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _weights(tc: ts.TrainingClient) -> dict[str, np.ndarray]:
    return {k[len("weights/") :]: v for k, v in state_arrays(tc).items() if k.startswith("weights/")}


def _ab(weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(A by module, B by module)`` under the naming contract of LORA-9: every key is
    ``<module path>.lora_A`` or ``<module path>.lora_B``, each module has both. Fails loudly otherwise."""
    a = {k[: -len(".lora_A")]: v for k, v in weights.items() if k.endswith(".lora_A")}
    b = {k[: -len(".lora_B")]: v for k, v in weights.items() if k.endswith(".lora_B")}
    stray = [k for k in weights if not k.endswith((".lora_A", ".lora_B"))]
    assert not stray, f"[LORA-9] introspected adapter tensors not named <module>.lora_A / <module>.lora_B: {stray[:5]}"
    assert a and set(a) == set(b), f"[LORA-9] modules without both A and B: {sorted(set(a) ^ set(b))[:5]}"
    return a, b


@pytest.mark.requires("introspection")
@pytest.mark.spec("LORA-8", "LORA-9")
def test_a_new_adapter_has_b_zero_and_kaiming_uniform_a(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    """With ``introspection`` (LORA-9 names the tensors): ``B = 0`` exactly, ``A`` of shape
    ``(rank, in)`` within ``U(-1/sqrt(in), 1/sqrt(in))`` and not visibly narrower: its largest entry
    beyond a quarter of the bound (a correct draw misses that with probability ``0.25**(rank·in)``,
    below 1e-9 for rank 4 and ``in >= 4``)."""
    rank = 4
    a, b = _ab(_weights(training_client(seed=5, rank=rank)))
    for module, value in b.items():
        assert np.all(value == 0), f"[LORA-2] {module}.lora_B is not zero in a new adapter"
        assert value.ndim == 2 and value.shape[1] == rank, f"[LORA-9] {module}.lora_B has shape {value.shape}"
    for module, value in a.items():
        assert value.ndim == 2 and value.shape[0] == rank, f"[LORA-9] {module}.lora_A has shape {value.shape}"
        bound = 1.0 / math.sqrt(value.shape[1])
        assert np.abs(value).max() <= bound * (1 + 1e-6), f"[LORA-8] {module}.lora_A exceeds U(-1/sqrt(in), 1/sqrt(in))"
        assert np.abs(value).max() > bound / 4, (
            f"[LORA-8] {module}.lora_A looks too small for kaiming_uniform(a=sqrt(5))"
        )


def _probe_setup(backend: ConformanceBackend, sampler: ts.SamplingClient) -> tuple[list[int], int, list[int]]:
    """A prompt, a target (the third most likely next token) and four likely other tokens."""
    v = backend.vocab_size
    prompt = [(13 * i + 5) % v for i in range(5)]
    logprobs = next_token_logprobs(sampler, prompt, v, backend.capabilities, "LORA-1")
    ranked = [int(t) for t in np.argsort(-logprobs, kind="stable")[:5]]
    return prompt, ranked[2], [ranked[0], ranked[1], ranked[3], ranked[4]]


@pytest.mark.spec("LORA-4", "LORA-2")
def test_an_unembedding_adapter_moves_every_other_logit_alike(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    """Black-box, every backend (``conformance.lora_probe``): with ``train_unembed`` alone the
    hidden state never changes, so the first step moves every non-target logit by exactly ``-c``
    and the target's by ``+c``: the non-target logprob changes agree within the measurement error.
    An adapted attention or MLP layer (or a non-zero ``B``) breaks that. Before the step, the fresh
    client scores like the base model (``B = 0``, LORA-2)."""
    prompt, target, others = _probe_setup(conformance_backend, base_sampler)
    base = next_token_logprobs(
        base_sampler, prompt, conformance_backend.vocab_size, conformance_backend.capabilities, "LORA-2"
    )
    for seed in (3, 4):
        probe = first_step(training_client, prompt, target, others, rank=4, seed=seed, steps=[probe_params()])
        assert_close(probe.before, base[[target, *others]], "token", "LORA-2", what="fresh adapter vs base model")
        allowed = 2 * c_allowance(probe.c, probe.before)
        assert probe.spread <= allowed, (
            f"[LORA-4] train_unembed alone: the first step moved the non-target logprobs by amounts {probe.spread:.3e} "
            f"apart (allowed {allowed:.3e}); something before lm_head was adapted"
        )


@pytest.mark.spec("LORA-4")
def test_each_selected_family_is_trained(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    """Black-box: a client adapting only attention, or only the MLP, is moved by a step (its
    family was adapted and is trainable)."""
    prompt, target, others = _probe_setup(conformance_backend, base_sampler)
    probe = [sequence_datum([*prompt, token], explicit=True) for token in (target, *others)]
    for flags in ({"train_mlp": False, "train_unembed": False}, {"train_attn": False, "train_unembed": False}):
        tc = training_client(rank=4, seed=9, **flags)
        before = forward_logprobs(tc, probe)
        tc.forward_backward(probe[:1], "cross_entropy")
        tc.optim_step(probe_params())
        after = forward_logprobs(tc, probe)
        moved = max(float(np.max(np.abs(x - y))) for x, y in zip(after, before, strict=True))
        limit = 4 * (conformance_backend.tolerance.token_atol + conformance_backend.tolerance.token_rtol * 20)
        assert moved > limit, f"[LORA-4] a step with {flags} changed no logprob by more than {limit:g} ({moved:.3e})"


def _widest_rank(training_client: Factory) -> int:
    """The widest of ranks 128, 64, ..., 8 that the backend accepts: a wider one than the model is
    refused with ``LimitExceededError`` on ``rank`` (LIM-1), any other error is a failure."""
    for rank in (128, 64, 32, 16, 8):
        try:
            training_client(rank=rank, seed=0)
        except ts.LimitExceededError as exc:
            assert exc.field == "rank", f"[LORA-1] rank {rank} refused on {exc.field!r}, not 'rank': {exc}"
            continue
        return rank
    raise AssertionError("[LORA-1] the backend refuses every rank from 128 down to 8")


@pytest.mark.spec("LORA-1")
def test_the_first_steps_effect_does_not_depend_on_the_rank(
    conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    """Black-box, every backend (``conformance.lora_probe``): the first step of an unembedding
    adapter moves the logits by ``c = lr·(alpha/rank)·Σ_k |a_k·h|`` over the ``rank`` rows ``a_k``
    of ``A``, so ``c / lr`` is ``alpha`` times the mean of ``rank`` i.i.d. ``|a·h|``: the same
    expectation at every rank. ``alpha`` in place of ``alpha / rank`` multiplies it by the rank.

    Statistic: the mean ``c`` at rank ``r / 8`` over ``2560 / r`` seeds (320 rows) and at rank ``r``
    over ``ceil(384 / r)`` seeds (at least 384 rows), ``r`` the widest of ranks 128, 64, 32, ... that
    the backend accepts (LIM-1 refuses a rank above the model's width); fail when their ratio leaves
    ``[1/2.83, 2.83]`` (a wrong scaling gives 8 or 1/8). False-failure probability: ``a·h`` is a sum
    of ``in`` independent uniform terms, near-Gaussian (kurtosis <= 3); for a Gaussian the mean of
    ``n`` values of ``|a·h|/E|a·h|`` deviates by a relative ``t`` with probability at most
    ``exp(-n·(2/π)·t²/2)`` (Lipschitz concentration), so with ``n >= 320`` rows on each side a ratio
    beyond 2.83 or below 1/2.83 has probability below ``6e-8``. (A distribution-free bound from
    the uniform law alone is far weaker.)"""
    prompt, target, others = _probe_setup(conformance_backend, base_sampler)

    def mean_c(rank: int, seeds: range) -> float:
        values = [
            first_step(training_client, prompt, target, others, rank=rank, seed=s, steps=[probe_params()]).c
            for s in seeds
        ]
        assert all(np.isfinite(values)), f"[LORA-1] rank {rank}: non-finite first-step effects {values}"
        return float(np.mean(values))

    wide = _widest_rank(training_client)
    narrow = wide // 8
    small = mean_c(narrow, range(100, 100 + 320 // narrow))
    large = mean_c(wide, range(200, 200 + math.ceil(384 / wide)))
    ratio = large / small
    assert 1 / 2.83 <= ratio <= 2.83, (
        f"[LORA-1] the first step's effect grows with the rank: {large:.4g} at rank {wide} vs {small:.4g} "
        f"at rank {narrow} "
        f"(ratio {ratio:.3g}; alpha/rank scaling gives ~1, alpha alone 8)"
    )


@pytest.mark.spec("LORA-3", "TOL-4")
def test_the_seed_makes_initialisation_reproducible(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size, explicit=True)
    clients = [training_client(seed=11), training_client(seed=11), training_client(seed=12)]
    if conformance_backend.supports("introspection"):
        w = [_weights(tc) for tc in clients]
        for key in w[0]:
            assert_replay(w[1][key], w[0][key], "token", "LORA-3", what=f"{key} with the same seed")
        assert any(not np.array_equal(w[2][k], w[0][k]) for k in w[0]), "[LORA-3] different seeds, same adapter"
    # B = 0 hides A until a step: train all three identically, then compare
    for tc in clients:
        tc.forward_backward(probe, "cross_entropy")
        tc.optim_step(ADAM)
        tc.forward_backward(probe, "cross_entropy")
        tc.optim_step(ADAM)
    same, other = forward_logprobs(clients[1], probe), forward_logprobs(clients[2], probe)
    for i, (x, y) in enumerate(zip(same, forward_logprobs(clients[0], probe), strict=True)):
        assert_replay(x, y, "token", "LORA-3", what=f"probe {i}: same seed, same training")
    assert any(not np.array_equal(x, y) for x, y in zip(other, same, strict=True)), "[LORA-3] seed has no effect"


@pytest.mark.requires("introspection")
@pytest.mark.spec("LORA-9")  # failures name LORA-4
def test_trained_families_select_the_adapted_modules(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    full = _weights(training_client(rank=4))
    configs = {
        "attn": {"train_mlp": False, "train_unembed": False},
        "mlp": {"train_attn": False, "train_unembed": False},
        "unembed": {"train_attn": False, "train_mlp": False},
    }
    parts: dict[str, set[str]] = {}
    for family, flags in configs.items():
        tc = training_client(rank=4, **flags)
        weights = _weights(tc)
        parts[family] = set(weights)
        assert weights, f"[LORA-4] train_{family} alone adapts nothing"
        assert set(weights) < set(full), f"[LORA-4] train_{family} alone adapts tensors outside the full adapter"
        for name, value in weights.items():
            assert 4 in value.shape, f"[LORA-9] {name} has shape {value.shape}, no dimension equals the rank 4"
    assert parts["attn"] | parts["mlp"] | parts["unembed"] == set(full), "[LORA-4] families do not cover the adapter"
    assert not (parts["attn"] & parts["mlp"] or parts["attn"] & parts["unembed"] or parts["mlp"] & parts["unembed"]), (
        "[LORA-4] two families adapt the same tensor"
    )


@pytest.mark.requires("introspection")
@pytest.mark.spec("LORA-9")  # failures name LORA-4
def test_unselected_families_never_change(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    probe = probe_batch(conformance_backend.vocab_size, explicit=True)
    only_unembed = training_client(rank=4, train_attn=False, train_mlp=False)
    before = _weights(only_unembed)
    only_unembed.forward_backward(probe, "cross_entropy")
    only_unembed.optim_step(ADAM)
    after = _weights(only_unembed)
    assert set(after) == set(before), "[LORA-4] training added or removed adapter tensors"
    assert any(not np.array_equal(after[k], before[k]) for k in before), "[OPT-1] the step moved nothing"


@pytest.mark.spec("LORA-6", "TYP-14")
def test_get_info_reports_base_model_and_rank(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    for rank in (1, 4, 8):
        info = training_client(rank=rank).get_info()
        assert info.lora_rank == rank, f"[LORA-6] lora_rank {info.lora_rank}, expected {rank}"
        assert info.model_name == conformance_backend.base_model, f"[TYP-14] model_name {info.model_name}"
        assert info.model_data.model_name == conformance_backend.base_model, "[TYP-14] model_data.model_name"
        assert info.is_lora is True
    served = service.get_server_capabilities().supported_models
    assert served, "[TYP-14] get_server_capabilities lists no model"
    for model in served:
        assert model.model_name and model.max_context_length, f"[TYP-14] {model}"
    assert conformance_backend.base_model in {m.model_name for m in served}


@pytest.mark.spec("LORA-7", "LORA-5")
def test_requests_run_together_with_other_clients_match_a_run_alone(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    v = conformance_backend.vocab_size
    short = [
        sequence_datum([(3 * i + 1) % v for i in range(5)], explicit=True),
        sequence_datum([(7 * i + 2) % v for i in range(8)], explicit=True),
    ]
    rl = [rl_datum([(5 * i + 4) % v for i in range(7)], [0.5 - 0.2 * i for i in range(6)], [-2.5] * 6)]
    longer = [sequence_datum([(11 * i + 5) % v for i in range(23)], explicit=True) for _ in range(3)]
    probe = probe_batch(v, explicit=True)
    introspection = conformance_backend.supports("introspection")

    def rounds(tc: ts.TrainingClient, others: list[ts.TrainingClient]) -> list[ts.ForwardBackwardOutput]:
        """Three rounds of SFT, RL and a forward; ``others`` submit their own work alongside."""
        outputs = []
        for loss_fn, data in (("cross_entropy", short), ("ppo", rl), ("cross_entropy", short)):
            mine = tc.forward_backward(data, loss_fn)
            theirs = [o.forward_backward(longer, "cross_entropy") for o in others]
            theirs += [o.forward(longer[:1] + short, "cross_entropy") for o in others]
            outputs.append(mine.result())
            for f in theirs:
                f.result()
            steps = [tc.optim_step(ADAM), *(o.optim_step(ADAM) for o in others)]
            for s in steps:
                s.result()
        outputs.append(tc.forward(short, "cross_entropy").result())
        outputs.append(tc.forward(rl, "ppo").result())
        return outputs

    alone = training_client(seed=11)
    together = training_client(seed=11)
    others = [training_client(seed=12), training_client(seed=13, rank=8), training_client(seed=14, train_mlp=False)]
    expected = rounds(alone, [])
    actual = rounds(together, others)
    for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for j, (g, w) in enumerate(zip(logprobs_of(got), logprobs_of(want), strict=True)):
            assert_close(g, w, "token", "LORA-7", what=f"request {i} datum {j} logprobs next to other clients")
        assert_close(got.metrics["loss:sum"], want.metrics["loss:sum"], "sum", "LORA-7", what=f"request {i} loss")
    assert_mapping_close(
        snapshot(together, probe, introspection),
        snapshot(alone, probe, introspection),
        "token",
        "LORA-7",
        what="client state after training next to other clients",
    )
