"""Seeded initialisation that is safe with several engines in one process.

torch's default CPU generator is process-wide, and transformers and peft initialise new weights
from it. ``torch.random.fork_rng`` saves and restores that generator, but it does not stop another
thread from reseeding or drawing from it in between: two engines (two ``TorchBackend``s, or a
``TorchBackend`` beside a user's own code) creating seeded adapters at the same time drew from one
shared stream, so the same ``LoraConfig.seed`` gave different weights (spec LORA-1: a seed fixes
the initial adapter). Every seeded initialisation of ours holds one process-wide lock for the whole
fork / seed / draw / restore, so seeded draws of different engines never interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded_global_rng"]

_GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed: int | None) -> Iterator[None]:
    """Run the body with torch's global CPU generator seeded by ``seed`` (left as it is when
    ``None``), restore the generator afterwards, and keep other seeded bodies out meanwhile."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield
