"""Mutants of client isolation and all-or-nothing calls (LORA-5, LORA-6, FB-14, FB-15): the mock
backend with shared adapters, clamped ranks, its gradient restore or its loss finite check broken.

(OPT-10 has no mutant: the mock computes in float64, so no probe of the suite gives it a non-finite
gradient norm; see EXEMPT.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tinker_std.backend import GradientSnapshot, ModelSpec
from tinker_std.backends.mock import MockBackend
from tinker_std.types import LoraConfig

from . import Mutant

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_atomicity::"


class RestoreIgnoredMock(MockBackend):
    """FB-14: ``restore_gradient`` does nothing, so a ``forward_backward`` whose last chunk fails
    keeps the gradient its earlier chunks accumulated."""

    name: ClassVar[str] = "mock-restore-ignored"

    async def restore_gradient(self, model_id: str, snapshot: GradientSnapshot) -> None:
        return None


class SharedAdapterMock(MockBackend):
    """LORA-5: training clients with the same base model and LoRA config share one adapter (so one
    client's steps and gradients reach the other)."""

    name: ClassVar[str] = "mock-shared-adapter"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._shared: dict[tuple[str, str], ModelSpec] = {}

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        key = (base_model, lora.model_dump_json())
        first = self._shared.get(key)
        if first is None or first.model_id not in self._models:
            self._shared[key] = first = await super().create_model(base_model, lora)
            return first
        return self._register(base_model, self._model(first.model_id).adapter, None)


class RankClampedMock(MockBackend):
    """LORA-6: ranks above 4 are silently reduced to 4 (the client's ``get_info`` then reports 4)."""

    name: ClassVar[str] = "mock-rank-clamped"

    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        return await super().create_model(base_model, lora.model_copy(update={"rank": min(lora.rank, 4)}))


class NonFiniteLossAcceptedMock(MockBackend):
    """FB-15: the loss is not checked for finiteness, so an overflowing ``weights`` or importance
    ratio yields an infinite ``loss:sum`` (and gradient) instead of ``NonFiniteError``."""

    name: ClassVar[str] = "mock-non-finite-loss-accepted"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std import losses, training_math

        if getattr(training_math.compute_loss, "__mutant__", False):
            return

        def compute_loss(loss_fn: str, logprobs: Any, inputs: Any, config: Any = None) -> torch.Tensor:
            spec = losses.LOSSES[loss_fn]
            cfg = losses.resolved_config(spec, config)
            values = [spec.fn(lp, datum_inputs, cfg) for lp, datum_inputs in zip(logprobs, inputs, strict=True)]
            return torch.stack(values).sum()

        compute_loss.__mutant__ = True  # type: ignore[attr-defined]
        training_math.compute_loss = compute_loss


def _m(cls: type, statement: str, test: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(
        backend=f"mutants.reliability:{cls.__name__}", statement=statement, selection=(T + test,), also=frozenset(also)
    )


MUTANTS = [
    Mutant(
        "mutants.reliability:SharedAdapterMock",
        "LORA-5",
        ("tinker_std.conformance.test_training::test_clients_on_one_base_model_are_isolated",),
    ),
    Mutant(
        "mutants.reliability:RankClampedMock",
        "LORA-6",
        ("tinker_std.conformance.test_lora::test_get_info_reports_base_model_and_rank",),
    ),
    _m(
        NonFiniteLossAcceptedMock,
        "FB-15",
        "test_overflowing_loss_inputs_are_refused_and_never_poison_the_adapter",
        also=("OPT-10",),
    ),
    _m(RestoreIgnoredMock, "FB-14", "test_a_call_whose_chunk_fails_leaves_no_gradient"),
]
