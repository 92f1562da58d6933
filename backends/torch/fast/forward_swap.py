"""``swapped_forwards``: the one way the fast paths replace a module's ``forward`` for a while.

Every fast path here works the same trick: within a context, some modules of the model compute
through a plain function assigned as the instance's ``forward`` (an instance attribute shadows
the class's method; assigning a module instead would register it as a child named ``forward``),
and on exit the module computes as before. The contexts nest, on purpose, and on different
modules: ``packed.packed_linears`` swaps frozen ``nn.Linear`` layers (the base weights, and the
sampled adapters' LoRA factors), and within it ``lora_linear.fused_lora_linears``,
``merged.merged_lora_linears``, ``per_row.per_row_adapters`` or ``direct_lora.direct_lora`` swap
the peft LoRA layers wrapping them. A swap of a module that is swapped already stacks: on exit the
outer swap's forward is back, not the class's. ``swapped_forward`` reads the swap in force on a
module, so an inner fast path can call an outer one's function directly (``direct_lora`` reads the
packed LoRA factors' products that way) instead of guessing from ``__dict__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["Forward", "swapped_forward", "swapped_forwards"]

Forward = Callable[..., torch.Tensor]


def swapped_forward(module: torch.nn.Module) -> Forward | None:
    """The function swapped in as ``module``'s forward by an enclosing ``swapped_forwards``, or
    ``None`` when it computes with its class's forward."""
    forward: Forward | None = module.__dict__.get("forward")
    return forward


@contextmanager
def swapped_forwards(swaps: Iterable[tuple[Any, Forward]]) -> Iterator[int]:
    """Within: each ``(module, forward)`` of ``swaps`` computes through ``forward`` (a plain
    function, never a module); yields how many modules were swapped. On exit, also after an error
    and also when ``swaps`` itself fails midway, every module computes as it did before: with the
    forward of the enclosing swap, if any, else its class's."""
    undo: list[tuple[Any, Forward | None]] = []
    try:
        for module, forward in swaps:
            undo.append((module, swapped_forward(module)))
            module.forward = forward
        yield len(undo)
    finally:
        for module, before in reversed(undo):
            if before is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = before
