"""One adapter's LoRA layers called directly in the sampler's unmerged decode path.

Where merging does not apply (``merged.py``: turned off, packing off, other devices), the decode
loop computes one adapter's LoRA layers as peft does, ``base(x) + lora_B(lora_A(x)) * scaling``,
but without peft's per-call bookkeeping (about 6% of a SmolLM2 decode step on CPU): ``direct_lora``
swaps each plain LoRA ``Linear``'s forward for those operations. Within ``packed.packed_linears``
the factors compute from their packed products (read with ``forward_swap.swapped_forward``).
Same operations, same bits as peft's forward with the adapter active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .forward_swap import swapped_forward, swapped_forwards

__all__ = ["direct_forward", "direct_lora"]


@contextmanager
def direct_lora(model: Any, name: str | None) -> Iterator[None]:
    """Within: every peft LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(x)) * scaling`` of
    adapter ``name`` (just ``base(x)`` where it has none, or when ``name`` is ``None``) directly:
    the operations of peft's forward with ``name`` active, without its per-call bookkeeping (about
    6% of a SmolLM2 decode step on CPU). A no-op unless every layer is a plain, unmerged LoRA
    ``Linear`` without dropout or variant (DoRA and the like) for ``name``."""
    from peft.tuners.lora import Linear, LoraLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    plain = all(
        isinstance(layer, Linear)
        and not layer.merged
        and (
            name is None
            or name not in layer.lora_A
            or (name not in layer.lora_variant and isinstance(layer.lora_dropout[name], torch.nn.Identity))
        )
        for layer in layers
    )
    if not plain:
        yield
        return
    with swapped_forwards((layer, direct_forward(layer, name)) for layer in layers):
        yield


def direct_forward(layer: Any, name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain function, never a module: assigning a module to ``layer.forward`` would register it
    as a child module named ``forward`` instead of overriding the method."""
    base = layer.base_layer
    if name is None or name not in layer.lora_A:

        def base_only(x: torch.Tensor) -> torch.Tensor:
            result: torch.Tensor = base(x)
            return result

        return base_only
    lora_a, lora_b, scaling = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
    linear = torch.nn.functional.linear
    if type(lora_a) is not torch.nn.Linear or type(lora_b) is not torch.nn.Linear or lora_a.bias is not None:
        linear_a, linear_b = lora_a, lora_b
    elif (packed_a := swapped_forward(lora_a)) is not None and (packed_b := swapped_forward(lora_b)) is not None:
        linear_a, linear_b = packed_a, packed_b  # the factors' packed products (``packed.packed_linears``)
    else:  # the same products as the modules' forward, without two module calls per layer
        a, b = lora_a.weight, lora_b.weight

        def linear_a(x: torch.Tensor) -> torch.Tensor:
            return linear(x, a)

        def linear_b(x: torch.Tensor) -> torch.Tensor:
            return linear(x, b)

    dtype = lora_a.weight.dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = base(x)
        delta: torch.Tensor = linear_b(linear_a(x if x.dtype == dtype else x.to(dtype))) * scaling
        out = result + delta
        return out if out.dtype == result.dtype else out.to(result.dtype)

    return forward
