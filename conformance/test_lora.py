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
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_mapping_close, assert_replay

Factory = Callable[..., ts.TrainingClient]


def _weights(tc: ts.TrainingClient) -> dict[str, np.ndarray]:
    return {k[len("weights/") :]: v for k, v in state_arrays(tc).items() if k.startswith("weights/")}


def _ab(weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    a = {k: v for k, v in weights.items() if "lora_a" in k.lower()}
    b = {k: v for k, v in weights.items() if "lora_b" in k.lower()}
    return a, b


@pytest.mark.requires("introspection")
@pytest.mark.spec("LORA-2", "LORA-1")
def test_a_new_adapter_has_b_zero_and_kaiming_uniform_a(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    rank = 4
    weights = _weights(training_client(seed=5, rank=rank))
    a, b = _ab(weights)
    if not a or not b or len(a) + len(b) != len(weights):
        pytest.skip("adapter tensors are not named with lora_A / lora_B; cannot tell A from B")
    for name, value in b.items():
        assert np.all(value == 0), f"[LORA-2] {name} is not zero in a new adapter"
    for name, value in a.items():
        assert value.ndim == 2 and value.shape[0] == rank, f"[LORA-1] {name} has shape {value.shape}, rank {rank}"
        bound = 1.0 / math.sqrt(value.shape[1])
        assert np.abs(value).max() <= bound * (1 + 1e-6), f"[LORA-2] {name} exceeds U(-1/sqrt(in), 1/sqrt(in))"
        assert np.abs(value).max() > bound / 4, f"[LORA-2] {name} looks too small for kaiming_uniform(a=sqrt(5))"
    for name, value in b.items():
        assert value.ndim == 2 and value.shape[1] == rank, f"[LORA-1] {name} has shape {value.shape}, rank {rank}"


@pytest.mark.spec("LORA-3", "TOL-4")
def test_the_seed_makes_initialisation_reproducible(
    conformance_backend: ConformanceBackend, training_client: Factory
) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
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
@pytest.mark.spec("LORA-4", "LORA-1")
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
            assert 4 in value.shape, f"[LORA-1] {name} has shape {value.shape}, no dimension equals the rank 4"
    assert parts["attn"] | parts["mlp"] | parts["unembed"] == set(full), "[LORA-4] families do not cover the adapter"
    assert not (parts["attn"] & parts["mlp"] or parts["attn"] & parts["unembed"] or parts["mlp"] & parts["unembed"])


@pytest.mark.requires("introspection")
@pytest.mark.spec("LORA-4", "OPT-1")
def test_unselected_families_never_change(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    probe = probe_batch(conformance_backend.vocab_size)
    only_unembed = training_client(rank=4, train_attn=False, train_mlp=False)
    before = _weights(only_unembed)
    only_unembed.forward_backward(probe, "cross_entropy")
    only_unembed.optim_step(ADAM)
    after = _weights(only_unembed)
    assert set(after) == set(before), "[LORA-4] training added or removed adapter tensors"
    assert any(not np.array_equal(after[k], before[k]) for k in before), "the step moved nothing"


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
    short = [sequence_datum([(3 * i + 1) % v for i in range(5)]), sequence_datum([(7 * i + 2) % v for i in range(8)])]
    rl = [rl_datum([(5 * i + 4) % v for i in range(7)], [0.5 - 0.2 * i for i in range(6)], [-2.5] * 6)]
    longer = [sequence_datum([(11 * i + 5) % v for i in range(23)]) for _ in range(3)]
    probe = probe_batch(v)
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
