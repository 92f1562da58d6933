"""Mutants of spec 08 (LORA): broken LoRA adapters on the mock backend, one statement each.

Each overrides ``create_model`` to build its adapter differently (the mock's ``_register`` then
wires it up as usual), or renames what ``read_state`` returns.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from tinker_std.backend import AdapterState, ModelSpec
from tinker_std.backends.mock import MockBackend
from tinker_std.backends.mock.lora import LORA_ALPHA, LoraAdapter
from tinker_std.backends.mock.model import model_config
from tinker_std.types import LoraConfig

from . import Mutant

__all__ = [
    "MUTANTS",
    "ScaledByAlphaMock",
    "WideAInitMock",
    "NonzeroBInitMock",
    "UnembedFlagAdaptsAttentionMock",
    "SeedIgnoredMock",
    "UnnamedTensorsMock",
]


class _AlphaAdapter(LoraAdapter):
    """Scales ``B·A`` by ``alpha`` instead of ``alpha / rank`` (also in its snapshots)."""

    def __init__(self, config: LoraConfig, params: dict[str, torch.Tensor]) -> None:
        super().__init__(config, params)
        self.scaling = LORA_ALPHA

    def snapshot(self) -> LoraAdapter:
        return _AlphaAdapter(self.config, {name: p.detach().clone() for name, p in self.params.items()})


class ScaledByAlphaMock(MockBackend):
    """LORA-1: the adapter output is scaled by ``alpha``, not ``alpha / rank``."""

    name: ClassVar[str] = "mock-scaled-by-alpha"

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        return self._register(base_model, _AlphaAdapter.fresh(lora, model_config(base_model)), None)


class _Reinitialised(MockBackend):
    """Builds the usual fresh adapter, then ``reinit`` changes it in place."""

    def reinit(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        raise NotImplementedError

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        adapter = LoraAdapter.fresh(lora, model_config(base_model))
        generator = torch.Generator().manual_seed(lora.seed if lora.seed is not None else 0)
        with torch.no_grad():
            for name, tensor in adapter.params.items():
                self.reinit(name, tensor, generator)
        return self._register(base_model, adapter, None)


class WideAInitMock(_Reinitialised):
    """LORA-8: ``A ~ U(-1, 1)`` instead of ``U(-1/sqrt(in), 1/sqrt(in))``."""

    name: ClassVar[str] = "mock-wide-a-init"

    def reinit(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        if name.endswith(".lora_A"):
            tensor.uniform_(-1.0, 1.0, generator=generator)


class NonzeroBInitMock(_Reinitialised):
    """LORA-2: ``B`` starts small but not zero, so a fresh adapter differs from the base model."""

    name: ClassVar[str] = "mock-nonzero-b-init"

    def reinit(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        if name.endswith(".lora_B"):
            bound = 1.0 / math.sqrt(tensor.shape[1])
            tensor.uniform_(-bound, bound, generator=generator)


class UnembedFlagAdaptsAttentionMock(MockBackend):
    """LORA-4: a client that selects only ``train_unembed`` gets attention adapters too."""

    name: ClassVar[str] = "mock-wrong-targets"

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        if lora.train_unembed and not lora.train_attn:
            lora = lora.model_copy(update={"train_attn": True})
        return await super().create_model(base_model, lora)


class SeedIgnoredMock(MockBackend):
    """LORA-3: ``LoraConfig.seed`` is ignored (every adapter gets a fresh random ``A``)."""

    name: ClassVar[str] = "mock-seed-ignored"

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        return await super().create_model(base_model, lora.model_copy(update={"seed": None}))


class UnnamedTensorsMock(MockBackend):
    """LORA-9: ``read_state`` names tensors ``<module>.A`` / ``<module>.B`` (no ``lora_`` suffix)."""

    name: ClassVar[str] = "mock-unnamed-tensors"

    async def read_state(self, model_id: str) -> AdapterState:
        state = await super().read_state(model_id)

        def rename(values: dict[str, object]) -> dict[str, object]:
            return {k.replace(".lora_A", ".A").replace(".lora_B", ".B"): v for k, v in values.items()}

        return AdapterState(
            weights=rename(dict(state.weights)),  # type: ignore[arg-type]
            grads=rename(dict(state.grads)),  # type: ignore[arg-type]
            exp_avg=rename(dict(state.exp_avg)),  # type: ignore[arg-type]
            exp_avg_sq=rename(dict(state.exp_avg_sq)),  # type: ignore[arg-type]
            step=state.step,
        )


_L = "tinker_std.conformance.test_lora::"
_S = "tinker_std.conformance.test_sampling::"

MUTANTS: list[Mutant] = [
    Mutant(
        "mutants.lora:ScaledByAlphaMock", "LORA-1", (_L + "test_the_first_steps_effect_does_not_depend_on_the_rank",)
    ),
    Mutant("mutants.lora:WideAInitMock", "LORA-8", (_L + "test_a_new_adapter_has_b_zero_and_kaiming_uniform_a",)),
    Mutant(
        "mutants.lora:NonzeroBInitMock",
        "LORA-2",
        (
            _L + "test_an_unembedding_adapter_moves_every_other_logit_alike",
            _S + "test_a_fresh_adapter_behaves_like_the_base_model",
        ),
        also=frozenset({"LORA-4", "SMP-18"}),
    ),
    Mutant(
        "mutants.lora:UnembedFlagAdaptsAttentionMock",
        "LORA-4",
        (_L + "test_an_unembedding_adapter_moves_every_other_logit_alike",),
    ),
    Mutant("mutants.lora:SeedIgnoredMock", "LORA-3", (_L + "test_the_seed_makes_initialisation_reproducible",)),
    Mutant(
        "mutants.lora:UnnamedTensorsMock",
        "LORA-9",
        (_L + "test_a_new_adapter_has_b_zero_and_kaiming_uniform_a",),
    ),
]
