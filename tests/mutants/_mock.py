"""Reaching into the mock backend and the client layer, for mutants only.

A mutant breaks one statement and keeps everything else. Most break the backend (a subclass of
``MockBackend`` overriding one engine call, through the mock's private model table); the statements
that the shared client layer implements for every backend (futures, ordering, validation, error
conversion) are broken by a mutant that replaces one client-layer function when the mutant backend
is constructed. That stands for a provider shipping its own client layer (or a server in front of
the SDK) with that bug. The replacement lasts for the process: each mutant runs in a process of its
own (``mutants._runner.run_suite``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tinker_std.backends.mock import MockBackend

__all__ = ["params", "grads", "replace", "PatchingMock"]


def params(backend: MockBackend, model_id: str) -> dict[str, torch.Tensor]:
    """The adapter tensors of a training model (live, trainable)."""
    return backend._model(model_id).adapter.params


def grads(backend: MockBackend, model_id: str) -> dict[str, torch.Tensor]:
    """The accumulated gradient, as copies (zeros where there is none)."""
    return {
        name: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for name, p in params(backend, model_id).items()
    }


def replace(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make(original)``, once per process."""
    original = getattr(owner, name)
    if getattr(original, "__mutant__", False):
        return
    replacement = make(original)
    replacement.__mutant__ = True
    setattr(owner, name, replacement)


class PatchingMock(MockBackend):
    """The mock backend, plus a client-layer replacement applied when it is constructed."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.patch()

    @classmethod
    def patch(cls) -> None:
        raise NotImplementedError
