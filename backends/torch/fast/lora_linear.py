"""One training adapter's LoRA linear layers as single fused products.

peft computes a LoRA layer as ``base_layer(x) + lora_B(lora_A(x)) * scaling``: the base product,
the rank-r product, a scaling pass over the ``(tokens, out)`` delta and an addition that
allocates the output again; the backward repeats the scaling and the sum of the two input
gradients. ``fused_lora_linears`` replaces, for the duration of a training pass, the forward of
every peft ``Linear`` whose only active adapter is the one being trained with ``_LoraLinear``:

* forward: ``y = x @ W.T`` (from a packed copy, ``packed.frozen_products``, when available) then
  ``y += scaling * (x @ A.T) @ B.T`` in place (one ``addmm_``);
* backward: ``dx = dy @ W`` then ``dx += scaling * (dy @ B) @ A`` in place,
  ``dA = scaling * (dy @ B).T @ x``, ``dB = scaling * dy.T @ (x @ A.T)``.

Same maths as peft's, rounded differently (the scaling applied to the rank-r factor, not the
delta): gradients and logprobs agree within the ``fp32`` class (``tests/test_torch_head.py``).
``segment_forward`` does the same per row segment in the multi-tenant pass
(``per_row.per_row_adapters``): each segment's rows go through ``_LoraLinear`` with their own
adapter at the shapes they have in that client's own pass, so a request's bits do not depend on
which path runs it. Layers with dropout, a LoRA variant (DoRA), a bias, a sharded base weight
(FSDP), several active adapters or merged weights keep peft's forward.
``TorchSettings.fused_lora`` (``TINKER_STD_FUSED_LORA=0``) turns the fusion off in both passes: the
engine then passes no adapter here and ``fused=False`` to ``per_row.per_row_adapters``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import module_walk, packed
from .forward_swap import swapped_forwards
from .row_segments import RowSegments

__all__ = ["fused_lora_linears", "segment_forward"]

Rows = Callable[[torch.Tensor], torch.Tensor]


def _products(layer: torch.nn.Linear, packing: bool) -> tuple[Rows, Rows]:
    fast = packed.frozen_products(layer) if packing else None
    if fast is not None:
        return fast
    weight = layer.weight.detach()
    return (lambda x: x @ weight.t()), (lambda g: g @ weight)


class _LoraLinear(torch.autograd.Function):
    """``x @ W.T + scaling * (x @ A.T) @ B.T`` for a frozen ``W``; see the module docstring."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, forward: Rows, backward: Rows, scaling: float
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        low = rows @ a.t()
        out = forward(rows)
        out.addmm_(low, b.t(), alpha=scaling)
        ctx.save_for_backward(rows, low, a, b)
        ctx.backward_rows = backward
        ctx.scaling = scaling
        ctx.shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, low, a, b = ctx.saved_tensors
        scaling: float = ctx.scaling
        dy = grad.reshape(-1, grad.shape[-1])
        dy_b = dy @ b
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.backward_rows(dy)
            grad_x.addmm_(dy_b, a, alpha=scaling)
            grad_x = grad_x.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_a = torch.mm(dy_b.t(), rows).mul_(scaling)
        if ctx.needs_input_grad[2]:
            # (low.T @ dy).T, not dy.T @ low: MKL runs the (r, tokens) x (tokens, out) orientation
            # about twice as fast for out = 1536 on an AMD EPYC (0.36 vs 0.66 ms at 512 tokens)
            grad_b = torch.mm(low.t(), dy).t().mul_(scaling)
        return grad_x, grad_a, grad_b, None, None, None


def _fusable(module: Any, adapter: str, per_row: bool = False) -> bool:
    """Whether ``module`` can run ``adapter`` as ``_LoraLinear``: active alone, or (``per_row``)
    installed and selected per row by ``per_row.per_row_adapters`` with all adapters disabled."""
    base = getattr(module, "base_layer", None)
    selected = per_row or (not module.disable_adapters and list(module.active_adapters) == [adapter])
    return (
        selected
        and type(base) is torch.nn.Linear
        and base.bias is None
        and type(base.weight.data) is torch.Tensor  # not a sharded FSDP ``DTensor`` (gathered in its forward only)
        and not base.weight.requires_grad
        and adapter in module.lora_A
        and not module.merged
        and adapter not in getattr(module, "lora_variant", {})
        and isinstance(module.lora_dropout[adapter], torch.nn.Identity)
        and getattr(module, "fan_in_fan_out", False) is False
        and module.lora_A[adapter].weight.dtype == base.weight.dtype
        and module.lora_A[adapter].bias is None
        and module.lora_B[adapter].bias is None
    )


def _fused_forward(module: Any, adapter: str, packing: bool) -> Callable[..., torch.Tensor]:
    base: torch.nn.Linear = module.base_layer
    forward, backward = _products(base, packing)
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    scaling = float(module.scaling[adapter])

    def fused(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or x.dtype != a.dtype:
            return type(module).forward(module, x, *args, **kwargs)  # type: ignore[no-any-return]
        result: torch.Tensor = _LoraLinear.apply(x, a, b, forward, backward, scaling)  # type: ignore[no-untyped-call]
        return result

    return fused


@contextmanager
def fused_lora_linears(model: torch.nn.Module, adapter: str | None, packing: bool) -> Iterator[int]:
    """Within: every peft LoRA ``Linear`` of ``model`` running ``adapter`` alone computes with
    ``_LoraLinear`` (see the module docstring); yields how many layers were switched (0 for
    ``adapter=None``). ``packing``: whether the frozen product may come from a packed copy
    (``TorchSettings.packed_weights``). Layers are switched back on exit."""
    from peft.tuners.lora import Linear as LoraLinear

    swaps = []
    if adapter is not None:
        swaps = [
            (module, _fused_forward(module, adapter, packing))
            for module in module_walk.modules(model)
            if isinstance(module, LoraLinear) and _fusable(module, adapter)
        ]
    with swapped_forwards(swaps) as switched:
        yield switched


def segment_forward(
    module: Any, segments: RowSegments, fallback: Callable[..., torch.Tensor], packing: bool
) -> Callable[..., torch.Tensor] | None:
    """For the multi-tenant pass: a forward of the peft LoRA ``Linear`` ``module`` in which the
    rows of every segment of ``segments`` (a ``row_segments.RowSegments``) run their adapter through
    ``_LoraLinear`` (or the base layer alone, for a segment whose adapter is not on this layer) at
    their first ``length`` positions, padding positions giving zeros. ``None`` when an adapter of
    the segments cannot be fused here. ``packing`` as for ``fused_lora_linears``. ``fallback(module, x, output)``
    computes the result peft's way from the base output, for calls with extra arguments.
    ``None`` too when no segment's adapter is on this layer (its output is the base layer's)."""
    names = {name for _, _, name, _ in segments.segments if name is not None and name in module.lora_A}
    if not names or not all(_fusable(module, name, per_row=True) for name in names):
        return None
    base: torch.nn.Linear = module.base_layer
    forward, backward = _products(base, packing)

    def per_segment(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or any(x.dtype != module.lora_A[n].weight.dtype for n in names):
            return fallback(module, x, type(module).forward(module, x, *args, **kwargs))
        pieces = []
        for (_, _, name, length), rows in zip(segments.segments, torch.split(x, segments.sizes), strict=True):
            pad = 0 if length is None or rows.dim() < 3 else rows.shape[1] - length
            if pad > 0:
                rows = rows[:, :length]
            if name is not None and name in module.lora_A:
                a, b = module.lora_A[name].weight, module.lora_B[name].weight
                piece = _LoraLinear.apply(rows, a, b, forward, backward, float(module.scaling[name]))  # type: ignore[no-untyped-call]
            else:
                piece = base(rows)
            pieces.append(torch.nn.functional.pad(piece, (0, 0, 0, pad)) if pad > 0 else piece)
        return torch.cat(pieces)

    return per_segment
