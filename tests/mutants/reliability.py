"""Mutants of the all-or-nothing statement (FB-14): the mock backend with its gradient restore broken.

(OPT-10 has no mutant: on the mock both overflow probes of the suite are refused at
``forward_backward`` (FB-15), so no non-finite gradient ever reaches ``optim_step``; see EXEMPT.)
"""

from __future__ import annotations

from typing import ClassVar

from tinker_std.backend import GradientSnapshot
from tinker_std.backends.mock import MockBackend

from . import Mutant

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_training::"


class RestoreIgnoredMock(MockBackend):
    """FB-14: ``restore_gradient`` does nothing, so a ``forward_backward`` whose last chunk fails
    keeps the gradient its earlier chunks accumulated."""

    name: ClassVar[str] = "mock-restore-ignored"

    async def restore_gradient(self, model_id: str, snapshot: GradientSnapshot) -> None:
        return None


def _m(cls: type, statement: str, test: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(
        backend=f"mutants.reliability:{cls.__name__}", statement=statement, selection=(T + test,), also=frozenset(also)
    )


MUTANTS = [
    _m(RestoreIgnoredMock, "FB-14", "test_a_call_whose_chunk_fails_leaves_no_gradient"),
]
