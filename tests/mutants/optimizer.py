"""Mutants of spec 04 (OPT): broken AdamW steps on the mock backend, one statement each.

Each is a ``MockBackend`` subclass whose ``optim_step`` differs from ``tinker_std.training_math.adamw_step``
in one way. The hand-written step (``_step``) follows torch's single-tensor AdamW, so the
unmutated variant equals the mock's step.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from tinker_std.backends.mock import MockBackend
from tinker_std.types import AdamParams, OptimStepResponse

from . import Mutant

__all__ = [
    "MUTANTS",
    "BiasCorrectionTMinus1Mock",
    "CoupledWeightDecayMock",
    "WeightDecayIgnoredMock",
    "ClippingIgnoredMock",
    "PerTensorClippingMock",
    "EmptyStepSkippedMock",
    "StepCounterStuckMock",
    "DefaultBetasMock",
    "ClippedNormReportedMock",
    "NewClientStartsAtStepFiveMock",
]

CLIP_EPS = 1e-6


class _HandWrittenAdamW(MockBackend):
    """The mock with AdamW written out (``variant`` selects the single bug; ``""`` is correct)."""

    variant: ClassVar[str] = ""

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        model = self._model(model_id)
        tensors = model.adapter.parameters()
        pending = any(p.grad is not None for p in tensors)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in tensors]
        norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
        if self.variant == "skip_empty" and not pending:
            step = int(model.optimizer.state.get(tensors[0], {}).get("step", 0))
            return OptimStepResponse(metrics={"grad_norm:max": 0.0, "step:max": float(step)})
        c = params.grad_clip_norm
        if c > 0 and self.variant != "no_clip":
            if self.variant == "per_tensor_clip":
                grads = [g * min(1.0, c / (float(torch.linalg.vector_norm(g)) + CLIP_EPS)) for g in grads]
            else:
                grads = [g * min(1.0, c / (norm + CLIP_EPS)) for g in grads]
        b1, b2 = (0.9, 0.95) if self.variant == "default_betas" else (params.beta1, params.beta2)
        lr, eps, wd = params.learning_rate, params.eps, params.weight_decay
        with torch.no_grad():
            for p, g in zip(tensors, grads, strict=True):
                state = model.optimizer.state.setdefault(p, {})
                if not state:
                    start = 5.0 if self.variant == "start_at_5" else 0.0
                    state.update(step=torch.tensor(start), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                t = float(state["step"]) + 1
                state["step"] = torch.tensor(1.0 if self.variant == "stuck_step" else t)
                if self.variant == "coupled_decay":
                    g = g + wd * p
                elif self.variant != "no_decay":
                    p.mul_(1 - lr * wd)
                state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                tc = 1.0 if self.variant == "stuck_step" else t - 1 if self.variant == "bias_t_minus_1" else t
                bc1, bc2 = 1 - b1**tc, 1 - b2**tc
                denom = state["exp_avg_sq"].sqrt() / math.sqrt(bc2) if bc2 > 0 else state["exp_avg_sq"] * math.inf
                step_size = lr / bc1 if bc1 > 0 else math.inf
                p.addcdiv_(state["exp_avg"], denom.add_(eps), value=-step_size)
                p.grad = None
        reported = norm
        if self.variant == "clipped_norm" and c > 0:
            reported = min(norm, c)
        step = int(model.optimizer.state[tensors[0]]["step"])
        return OptimStepResponse(metrics={"grad_norm:max": reported, "step:max": float(step)})


class BiasCorrectionTMinus1Mock(_HandWrittenAdamW):
    """OPT-3: bias corrections use ``t - 1`` (the first step divides by zero)."""

    name: ClassVar[str] = "mock-bias-t-minus-1"
    variant: ClassVar[str] = "bias_t_minus_1"


class CoupledWeightDecayMock(_HandWrittenAdamW):
    """OPT-2: weight decay added to the gradient (Adam with L2) instead of decoupled."""

    name: ClassVar[str] = "mock-coupled-decay"
    variant: ClassVar[str] = "coupled_decay"


class WeightDecayIgnoredMock(_HandWrittenAdamW):
    """OPT-2: weight decay ignored."""

    name: ClassVar[str] = "mock-no-decay"
    variant: ClassVar[str] = "no_decay"


class ClippingIgnoredMock(_HandWrittenAdamW):
    """OPT-4: ``grad_clip_norm`` ignored."""

    name: ClassVar[str] = "mock-no-clip"
    variant: ClassVar[str] = "no_clip"


class PerTensorClippingMock(_HandWrittenAdamW):
    """OPT-4: each tensor clipped by its own norm instead of the global norm."""

    name: ClassVar[str] = "mock-per-tensor-clip"
    variant: ClassVar[str] = "per_tensor_clip"


class EmptyStepSkippedMock(_HandWrittenAdamW):
    """OPT-7: ``optim_step`` with no pending gradient does nothing (``t`` not advanced, no decay)."""

    name: ClassVar[str] = "mock-empty-step-skipped"
    variant: ClassVar[str] = "skip_empty"


class StepCounterStuckMock(_HandWrittenAdamW):
    """OPT-7: the step counter never advances past 1 (bias corrections of ``t = 1`` forever)."""

    name: ClassVar[str] = "mock-step-stuck"
    variant: ClassVar[str] = "stuck_step"


class DefaultBetasMock(_HandWrittenAdamW):
    """OPT-5: the betas passed with a step are ignored; the defaults (0.9, 0.95) are used."""

    name: ClassVar[str] = "mock-default-betas"
    variant: ClassVar[str] = "default_betas"


class ClippedNormReportedMock(_HandWrittenAdamW):
    """OPT-6: ``grad_norm:max`` reports the norm after clipping."""

    name: ClassVar[str] = "mock-clipped-norm-reported"
    variant: ClassVar[str] = "clipped_norm"


class NewClientStartsAtStepFiveMock(_HandWrittenAdamW):
    """OPT-1: a new client's step counter starts at 5, not 0 (its first step has t = 6)."""

    name: ClassVar[str] = "mock-starts-at-step-5"
    variant: ClassVar[str] = "start_at_5"


class _Correct(_HandWrittenAdamW):
    """The hand-written step unmutated (a base for the selection check)."""

    name: ClassVar[str] = "mock-hand-written-adamw"


_M = "tinker_std.conformance.test_optimizer::"
_ADAMW = _M + "test_optim_step_is_torch_adamw_after_global_norm_clipping"
_PROBE = _M + "test_each_step_uses_exactly_the_hyperparameters_passed_with_it"
_EMPTY = _M + "test_a_step_without_gradient_still_counts"
_CLIP = _M + "test_a_clip_norm_above_the_gradient_norm_changes_nothing"

MUTANTS: list[Mutant] = [
    Mutant("mutants.optimizer:BiasCorrectionTMinus1Mock", "OPT-3", (_ADAMW, _PROBE), also=frozenset({"OPT-7"})),
    Mutant("mutants.optimizer:CoupledWeightDecayMock", "OPT-2", (_ADAMW, _PROBE), also=frozenset({"OPT-3"})),
    Mutant("mutants.optimizer:WeightDecayIgnoredMock", "OPT-2", (_ADAMW, _PROBE), also=frozenset({"OPT-3"})),
    Mutant("mutants.optimizer:ClippingIgnoredMock", "OPT-4", (_ADAMW, _CLIP), also=frozenset({"OPT-3", "OPT-6"})),
    Mutant("mutants.optimizer:PerTensorClippingMock", "OPT-4", (_ADAMW,), also=frozenset({"OPT-3"})),
    Mutant(
        "mutants.optimizer:EmptyStepSkippedMock",
        "OPT-7",
        (_ADAMW, _EMPTY, _PROBE),
        also=frozenset({"OPT-1", "OPT-3", "OPT-6"}),
    ),
    Mutant("mutants.optimizer:StepCounterStuckMock", "OPT-7", (_ADAMW, _PROBE), also=frozenset({"OPT-3", "OPT-6"})),
    Mutant("mutants.optimizer:DefaultBetasMock", "OPT-5", (_PROBE,), also=frozenset({"OPT-3"})),
    Mutant("mutants.optimizer:ClippedNormReportedMock", "OPT-6", (_ADAMW, _CLIP), also=frozenset({"OPT-4"})),
    Mutant("mutants.optimizer:NewClientStartsAtStepFiveMock", "OPT-1", (_EMPTY,), also=frozenset({"OPT-6", "OPT-7"})),
]
