"""Mutants of the gradient statements, folded in from the first mutation test
(``tests/conformance_mutants.py``): mean instead of sum, overwritten accumulation, a gradient that
lands after the next step. (mut-numeric's ``loss.py`` / ``training.py`` may take them over.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from tinker_std.backends.mock import MockBackend
from tinker_std.types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse

from . import Mutant
from ._mock import grads, params

__all__ = ["MUTANTS"]


class MeanLossMock(MockBackend):
    """FB-6 (and LOSS-1): the loss and its gradient are means over the call's input tokens instead
    of sums, so a duplicated datum does not double its contribution."""

    name: ClassVar[str] = "mock-mean-loss"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        before = grads(self, model_id)
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        n = sum(d.model_input.length for d in data)
        if backward:
            for name, p in params(self, model_id).items():
                if p.grad is not None:
                    p.grad = before[name] + (p.grad - before[name]) / n
        return out.model_copy(update={"metrics": {**out.metrics, "loss:sum": out.metrics["loss:sum"] / n}})


class NoAccumulationMock(MockBackend):
    """FB-4: every forward_backward replaces the accumulated gradient instead of adding to it."""

    name: ClassVar[str] = "mock-no-accumulation"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if backward:
            for p in params(self, model_id).values():
                p.grad = None
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)


class LazyGradientMock(MockBackend):
    """FB-5 (and FB-3): a forward_backward's gradient lands only after the next optim_step, as if
    the backend ran the two requests in the wrong order. The step uses the gradient from before."""

    name: ClassVar[str] = "mock-lazy-gradient"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._pending: dict[str, dict[str, torch.Tensor]] = {}

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if not backward:
            return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        before = grads(self, model_id)
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        pending = self._pending.setdefault(model_id, {})
        for name, p in params(self, model_id).items():
            if p.grad is not None:
                pending[name] = pending.get(name, torch.zeros_like(p)) + (p.grad - before[name])
                p.grad = before[name]
        return out

    async def optim_step(self, model_id: str, params_: AdamParams) -> OptimStepResponse:
        out = await super().optim_step(model_id, params_)
        for name, delta in self._pending.pop(model_id, {}).items():
            params(self, model_id)[name].grad = delta
        return out


T = "tinker_std.conformance."
MUTANTS = [
    Mutant(
        "mutants.gradients:MeanLossMock",
        "FB-6",
        (
            T + "test_losses::test_loss_sum_is_the_formula_of_the_returned_logprobs[cross_entropy]",
            T + "test_losses::test_a_duplicated_datum_doubles_its_contribution[cross_entropy]",
            T + "test_losses::test_a_duplicated_datum_doubles_its_gradient",
        ),
        also=frozenset({"FB-2", "LOSS-1"}),
    ),
    Mutant(
        "mutants.gradients:NoAccumulationMock",
        "FB-4",
        (T + "test_training::test_gradients_accumulate_by_summation",),
    ),
    Mutant(
        "mutants.gradients:LazyGradientMock",
        "FB-5",
        (T + "test_training::test_optim_step_consumes_the_gradient",),
        also=frozenset({"FB-3"}),
    ),
]
