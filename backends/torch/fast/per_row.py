"""Several LoRA adapters in one pass: each run of batch rows through its own adapter.

``per_row_adapters`` is what lets the multi-tenant training pass (``multi_tenant.py``) and the
sampler's unmerged path (``sampler.py``) run several clients' rows through one forward of the
shared base model. Rows are independent, so each adapter's rows get what they would get alone;
with ``fused`` each segment computes as ``lora_linear`` computes a single adapter
(``lora_linear.segment_forward``), the same bits as that client's own pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from . import lora_linear, module_walk
from .forward_swap import swapped_forwards
from .row_segments import RowSegments, Segment

__all__ = ["per_row_adapters"]


def _segment_delta_hook(state: RowSegments) -> Any:
    """A forward hook for one peft LoRA ``Linear`` whose adapters are disabled (so its output is
    ``base_layer(x)``): adds ``lora_B(lora_A(x[rows])) * scaling`` of each segment's adapter to
    those rows. Same operations, in the same order, as peft's single-adapter forward.

    The per-segment deltas are joined with one ``cat`` (whose backward is a cheap split) rather than
    written into slices of the output, which would zero-fill a full-size gradient per segment."""

    def hook(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not any(name is not None and name in module.lora_A for _, _, name, _ in state.segments):
            return output
        x = inputs[0]
        pieces: list[torch.Tensor | None] = []
        dtype: torch.dtype | None = None
        for (_, _, name, length), rows in zip(state.segments, x.split(state.sizes), strict=True):
            if name is None or name not in module.lora_A:
                pieces.append(None)
                continue
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            dtype = lora_a.weight.dtype
            pad = 0 if length is None or rows.dim() < 3 else rows.shape[1] - length
            if pad > 0:
                rows = rows[:, :length]
            delta = lora_b(lora_a(rows.to(dtype))) * module.scaling[name]
            pieces.append(torch.nn.functional.pad(delta, (0, 0, 0, pad)) if pad > 0 else delta)
        assert dtype is not None
        full = [
            piece if piece is not None else output.new_zeros((size, *output.shape[1:]), dtype=dtype)
            for piece, size in zip(pieces, state.sizes, strict=True)
        ]
        return (output + torch.cat(full)).to(output.dtype)

    return hook


@contextmanager
def per_row_adapters(
    model: torch.nn.Module,
    segments: Sequence[Segment],
    trainable: Sequence[dict[str, torch.nn.Parameter]] = (),
    fused: bool = False,
    packing: bool = True,
) -> Iterator[RowSegments]:
    """Run ``model`` on a mixed batch: rows ``start:stop`` of every LoRA layer's input use that
    segment's adapter, other rows none. The parameters in ``trainable`` require grad for the
    duration (rows are independent, so each adapter's gradient comes from its own rows only);
    every other adapter tensor does not. With ``fused``, layers that allow it compute each
    segment as ``lora_linear`` does for one adapter (``lora_linear.segment_forward``: the bits of
    a single-adapter pass with ``fused_lora_linears``, ``packing`` as there); the others, and all
    without ``fused``, as peft does. On exit all adapters are disabled and frozen again, so callers ``activate``
    before the next single-adapter pass."""
    from peft.tuners.lora import LoraLayer

    state = RowSegments(segments)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    handles = []
    hook = _segment_delta_hook(state)
    fused_forwards: list[tuple[Any, Any]] = []
    try:
        for layer in module_walk.tuner_layers(model):
            layer.enable_adapters(False)
        for params in trainable:
            for param in params.values():
                param.requires_grad_(True)
        for layer in layers:
            forward = None
            if fused:
                forward = lora_linear.segment_forward(layer, state, lambda m, x, out: hook(m, (x,), out), packing)
            if forward is not None:
                fused_forwards.append((layer, forward))
            else:
                handles.append(layer.register_forward_hook(hook))
        with swapped_forwards(fused_forwards):
            yield state
    finally:
        for handle in handles:
            handle.remove()
        for params in trainable:
            for param in params.values():
                param.requires_grad_(False)
