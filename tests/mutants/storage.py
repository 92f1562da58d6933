"""Mutants of the checkpoint-integrity statements (CKPT-14, CKPT-16): the mock backend with its
checkpoint store's digest check or its error wording broken.
"""

from __future__ import annotations

from typing import Any, ClassVar

import tinker_std as ts
from tinker_std.backend import ModelSpec
from tinker_std.backends.mock import MockBackend
from tinker_std.types import ParsedCheckpointTinkerPath

from . import Mutant

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_checkpoint_integrity::"


class DigestUncheckedMock(MockBackend):
    """CKPT-14: loads never verify the content digest, so a truncated file surfaces as whatever the
    reader raises, not ``CorruptCheckpointError``."""

    name: ClassVar[str] = "mock-digest-unchecked"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        store = self.checkpoint_store
        original = store.read_metadata

        def read_metadata(path: ParsedCheckpointTinkerPath, verify: bool = True) -> dict[str, Any]:
            return original(path, verify=False)

        store.read_metadata = read_metadata  # type: ignore[method-assign]


class PathRevealedMock(MockBackend):
    """CKPT-16: a corrupt checkpoint's error names the folder it was read from."""

    name: ClassVar[str] = "mock-path-revealed"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        try:
            return await super().load_model(path, with_optimizer)
        except ts.CorruptCheckpointError as exc:
            folder = self.checkpoint_store.directory(path)
            raise ts.CorruptCheckpointError(exc.path, f"{exc.problem} (in {folder})") from None


_DAMAGED = T + "test_a_damaged_checkpoint_is_refused_as_corrupt"

MUTANTS = [
    Mutant("mutants.storage:DigestUncheckedMock", "CKPT-14", (_DAMAGED,), also=frozenset({"CKPT-16"})),
    Mutant("mutants.storage:PathRevealedMock", "CKPT-16", (_DAMAGED,)),
]
