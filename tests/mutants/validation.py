"""Mutants of request validation added in spec 0.2 (OPT-9, CKPT-17, LOSS-17).

These statements are kept by the shared client layer for every backend (``tinker_std.client.
validation``, the checkpoint-name rule of ``tinker_std.types.checkpoint``, the span check of
``tinker_std.stability``), so each mutant replaces one piece of it (``mutants._mock.PatchingMock``):
a provider shipping its own client, or a server, with that bug.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tinker_std.client import validation
from tinker_std.types import AdamParams, checkpoint

from . import Mutant
from ._mock import PatchingMock
from ._patch import replace_everywhere

__all__ = ["MUTANTS"]


class BareLearningRateMock(PatchingMock):
    """OPT-9: ``optim_step(0.1)`` is taken as a step of learning rate 0.1 (an SGD-style API) instead
    of being refused with field ``optim_params``."""

    name: ClassVar[str] = "mock-bare-learning-rate"

    @classmethod
    def patch(cls) -> None:
        original = validation.validate_adam_params
        if getattr(original, "__mutant__", False):
            return

        def validate_adam_params(params: Any) -> AdamParams:
            if isinstance(params, float):
                return AdamParams(learning_rate=params)
            return original(params)

        validate_adam_params.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, validate_adam_params)


class LongNamesMock(PatchingMock):
    """CKPT-17: checkpoint names of up to 1000 characters are accepted (the bound is 200)."""

    name: ClassVar[str] = "mock-long-checkpoint-names"

    @classmethod
    def patch(cls) -> None:
        checkpoint.MAX_NAME_LENGTH = 1000


class SpansUncheckedMock(PatchingMock):
    """LOSS-17: provenance spans are never checked against the datum (a span list that does not
    tile ``model_input`` is accepted)."""

    name: ClassVar[str] = "mock-spans-unchecked"

    @classmethod
    def patch(cls) -> None:
        from tinker_std import stability

        original = stability.check_span_tiling
        if getattr(original, "__mutant__", False):
            return

        def check_span_tiling(i: int, datum: Any) -> None:
            return None

        check_span_tiling.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, check_span_tiling)


def _m(cls: type, statement: str, test: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(
        backend=f"mutants.validation:{cls.__name__}",
        statement=statement,
        selection=(f"tinker_std.conformance.{test}",),
        also=frozenset(also),
    )


MUTANTS = [
    _m(BareLearningRateMock, "OPT-9", "test_optimizer::test_the_optimizer_is_adamw", also=("TYP-14",)),
    _m(SpansUncheckedMock, "LOSS-17", "test_losses_v02::test_provenance_spans_must_tile_for_every_loss"),
    _m(LongNamesMock, "CKPT-17", "test_checkpoint_integrity::test_checkpoint_names_are_bounded", also=("CKPT-16",)),
]
