"""oneDNN-prepacked weights for the frozen linear layers of a base model, used by the decode loop.

On CPU, a decode step multiplies a few rows by every weight of the model. ``torch.nn.functional.
linear`` (MKL) repacks the weight matrix on every such call; at 8 rows that costs more than the
product itself (SmolLM2-135M: 20 ms of the 49,152 x 576 ``lm_head`` at 8 rows, 8.6 ms prepacked).
``packed_linears`` keeps, per frozen float32 ``nn.Linear``, a copy of its weight in oneDNN's
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``) and, within the context, computes the
layer with ``torch.ops.mkldnn._linear_pointwise`` from it.

The sampler's batch invariance (a row's logits do not depend on the other rows, ``sampler.py``)
needs every product to compute a row the same way whatever the other rows are. oneDNN's kernel
does so for any number of rows >= 2 on the machines this was measured on, but not for a single row
(which takes a matrix-vector path), and that is a property of a kernel, not a promise. So:

* a one-row input is computed as the first row of a two-row product (its copy as the second);
* each packed weight is *probed* when it is built: a random batch computed whole and as 2-row
  pieces must agree bit for bit (and agree with ``linear`` within float tolerance); a weight that
  fails is not packed, and its layer keeps MKL's path (which the sampler's 4-row blocks suit).

The packed copies are cached on the layers (``_ATTRIBUTE``), rebuilt when a weight changes (its
version counter) or the thread count changes (the probe's result depends on it), and cost one more
copy of the packed weights in memory. ``TINKER_STD_PACKED_SAMPLING=0`` turns the whole thing off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["packable", "packed_linears"]

_ATTRIBUTE = "_tinker_std_packed"
#: Rows of the probe batch; the packing hint (oneDNN picks a blocking for this many rows).
_PROBE_ROWS = 12
_HINT = 8


def packable() -> bool:
    """Whether this torch build has the oneDNN ops and packing is not turned off."""
    if os.environ.get("TINKER_STD_PACKED_SAMPLING", "1") == "0":
        return False
    try:
        available = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        return available and callable(torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


def _product(packed: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def rows(x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return result

    return rows


def _probe(weight: torch.Tensor, bias: torch.Tensor | None, rows: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``rows`` computes every row of a batch independently of the others (bit-equal
    whole vs in 2-row pieces, at several offsets) and agrees with ``linear``."""
    x = torch.randn(_PROBE_ROWS, weight.shape[1], generator=torch.Generator().manual_seed(0))
    pieces = torch.cat([rows(x[i : i + 2]) for i in range(0, _PROBE_ROWS, 2)])
    for start, stop in ((0, _PROBE_ROWS), (0, 4), (2, 10), (4, 12)):
        if not torch.equal(rows(x[start:stop]), pieces[start:stop]):
            return False
    return torch.allclose(pieces, torch.nn.functional.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


def _packed_forward(layer: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The packed forward of ``layer`` (built or taken from its cache), or ``None`` if it fails the probe."""
    weight = layer.weight
    key = (weight.data_ptr(), weight._version, torch.get_num_threads())
    cached = layer.__dict__.get(_ATTRIBUTE)
    if cached is None or cached[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _HINT)
        bias = None if layer.bias is None else layer.bias.detach()
        rows = _product(packed, bias)
        cached = (key, rows if _probe(weight.detach(), bias, rows) else None)
        layer.__dict__[_ATTRIBUTE] = cached
    rows_or_none: Callable[[torch.Tensor], torch.Tensor] | None = cached[1]
    if rows_or_none is None:
        return None
    rows = rows_or_none
    out_features = weight.shape[0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] == 1:  # a lone row takes oneDNN's matrix-vector path: compute it as a pair
            result = rows(flat.expand(2, -1).contiguous())[:1]
        else:
            result = rows(flat)
        return result.reshape(*x.shape[:-1], out_features)

    return forward


def _frozen_linears(model: Any) -> list[torch.nn.Linear]:
    """Every ``nn.Linear`` of ``model`` with a frozen float32 CPU weight that is not a LoRA factor."""
    factors: set[int] = set()
    for module in model.modules():
        for name in ("lora_A", "lora_B"):
            table = getattr(module, name, None)
            if isinstance(table, torch.nn.ModuleDict):
                factors.update(id(factor) for factor in table.values())
    return [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and id(m) not in factors
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and not m.weight.requires_grad
    ]


@contextmanager
def packed_linears(model: Any) -> Iterator[int]:
    """Within: ``model``'s frozen float32 CPU linear layers compute from packed weights (see the
    module docstring); yields how many layers are packed (0 when ``packable()`` is false). Call
    under ``torch.inference_mode`` or ``no_grad``: the packed path has no backward."""
    layers: list[torch.nn.Linear] = []
    if packable():
        for layer in _frozen_linears(model):
            forward = _packed_forward(layer)
            if forward is not None:
                layer.forward = forward  # type: ignore[method-assign,assignment]
                layers.append(layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
