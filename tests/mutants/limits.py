"""Mutants of the request limits (spec/11-limits.md, LIM).

The limits are enforced by the shared client layer before a request is queued
(``tinker_std.limits.Limits``), so each mutant replaces one ``Limits`` check
(``mutants._mock.PatchingMock``): a provider shipping its own client, or a server, without it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import tinker_std as ts
from tinker_std.limits import Limits

from . import Mutant
from ._mock import PatchingMock, replace

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_limits::"


class RankRefusedUntypedMock(PatchingMock):
    """LIM-1: a rank above the limit is refused, but as a plain ``BadRequestError``, not
    ``LimitExceededError``."""

    name: ClassVar[str] = "mock-rank-refused-untyped"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def check_rank(self: Limits, rank: object) -> None:
                try:
                    original(self, rank)
                except ts.LimitExceededError as exc:
                    raise ts.BadRequestError(exc.field, exc.problem) from None

            return check_rank

        replace(Limits, "check_rank", make)


class DatumsUnboundedMock(PatchingMock):
    """LIM-2: ``max_datums_per_call`` is not enforced."""

    name: ClassVar[str] = "mock-datums-unbounded"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def check_datums(self: Limits, count: int) -> None:
                return None

            return check_datums

        replace(Limits, "check_datums", make)


class SampleTokensUnboundedMock(PatchingMock):
    """LIM-3: only ``max_num_samples`` is enforced; ``num_samples x max_tokens`` is not."""

    name: ClassVar[str] = "mock-sample-tokens-unbounded"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def check_sample(self: Limits, num_samples: int, max_tokens: int) -> None:
                original(self, num_samples, 0)

            return check_sample

        replace(Limits, "check_sample", make)


def _m(cls: type, statement: str, test: str) -> Mutant:
    return Mutant(backend=f"mutants.limits:{cls.__name__}", statement=statement, selection=(T + test,))


MUTANTS = [
    _m(RankRefusedUntypedMock, "LIM-1", "test_lora_rank_is_bounded"),
    _m(DatumsUnboundedMock, "LIM-2", "test_datums_per_call_are_bounded"),
    _m(SampleTokensUnboundedMock, "LIM-3", "test_sample_work_is_bounded"),
]
