"""oneDNN-prepacked weights for the frozen linear layers of a base model, used by the decode loop.

On CPU, a decode step multiplies a few rows by every weight of the model. ``torch.nn.functional.
linear`` (MKL) repacks the weight matrix on every such call; at 8 rows that costs more than the
product itself (SmolLM2-135M: 20 ms of the 49,152 x 576 ``lm_head`` at 8 rows, 8.6 ms prepacked).
``packed_linears`` keeps, per frozen float32 ``nn.Linear``, a copy of its weight in oneDNN's
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``) and, within the context, computes the
layer with ``torch.ops.mkldnn._linear_pointwise`` from it.

The sampler's batch invariance (a row's logits do not depend on the other rows, ``sampler.py``)
needs every product to compute a row the same way whatever the other rows are. MKL's GEMM does not
(it picks its kernel by the number of rows; which row counts agree differs by CPU: on an AMD EPYC
any full block of 4 rows did, on an Intel Xeon with AVX-512 a 576 x 16 LoRA factor needed blocks
of 16). oneDNN's kernel on a packed weight does so for any number of rows >= 2 on both, but not for
a single row (which takes a matrix-vector path), and that is a property of a kernel, not a promise.
So the sampler computes its adapters from packed merged weights (``merged.py``; where merging is
off, it packs their LoRA factors as well as the frozen base weights), and:

* a one-row input is computed as the first row of a two-row product (its copy as the second);
* each packed weight is *probed* when it is built: a random batch computed whole and as 2-row
  pieces must agree bit for bit (and agree with ``linear`` within float tolerance); a weight that
  fails is not packed, and its layer keeps MKL's path (row-independent within float tolerance only,
  or bit for bit where the sampler's 4-row blocks suit the CPU).

The training forward uses the same context (``forward_pass.py``, ``ForwardPass.logprobs``): there the larger
products gain less (10-20% at 512 rows) but they are most of a step, and the backward's input
gradient ``grad @ W`` runs from a second packed copy, of ``W.T``.

The packed copies are cached on the layers (``_ATTRIBUTE``), rebuilt when a weight changes (its
version counter) or the thread count changes (the probe's result depends on it), and cost one more
copy of the frozen weights in memory each (one for sampling, one more once a training backward
ran). ``TorchSettings.packed_weights`` (``TINKER_STD_PACKED_WEIGHTS=0``) turns the whole thing off;
callers pass it (``packed_linears(enabled=...)``, and they skip ``frozen_products`` when it is off).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import module_walk
from .forward_swap import swapped_forwards

__all__ = ["apply_rows", "available", "frozen_products", "packed_linears", "packed_product"]

_ATTRIBUTE = "_tinker_std_packed"
#: Rows of the probe batch; the packing hint (oneDNN picks a blocking for this many rows).
_PROBE_ROWS = 12
_HINT = 8


def available() -> bool:
    """Whether this torch build has the oneDNN ops packing needs (``TorchSettings.packed_weights``
    decides whether they are used)."""
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


def packed_product(
    weight: torch.Tensor, bias: torch.Tensor | None = None, like: torch.nn.Linear | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> x @ weight.T (+ bias)`` for 2-d ``x`` of at least 2 rows (``apply_rows`` takes any
    shape) from a new packed copy of the float32 CPU ``weight``, or ``None`` when that product fails
    the probe. Nothing is cached (``merged.py`` keeps its own).

    ``like``: a frozen layer with a weight of the same shape (and a bias where ``bias`` is given)
    whose own packed product passed the probe at the current thread count; the new product is
    then not probed again. oneDNN picks its kernel from shapes, dtype and threads, not values, so
    row independence carries over; probing reads the weight about ten times, most of the cost of
    a new packed copy."""
    rows = _product(torch.ops.mkldnn._reorder_linear_weight(weight, _HINT), bias)
    if (
        like is not None
        and like.weight.shape == weight.shape
        and (like.bias is None) == (bias is None)
        and _is_frozen_cpu_float32(like)
        and _packed_rows(like, transposed=False) is not None
    ):
        return rows
    return rows if _probe(weight, bias, rows) else None


def _packed_rows(layer: torch.nn.Linear, transposed: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> x @ W.T (+ bias)`` (or, ``transposed``, ``g -> g @ W``, the input gradient) from a
    packed copy of ``layer``'s weight, built or taken from the layer's cache; ``None`` when the
    packed product fails the probe."""
    weight = layer.weight.detach()
    attribute = _ATTRIBUTE + ("_t" if transposed else "")
    key = (weight.data_ptr(), layer.weight._version, torch.get_num_threads())
    cached = layer.__dict__.get(attribute)
    if cached is None or cached[0] != key:
        matrix = weight.t().contiguous() if transposed else weight
        bias = None if transposed or layer.bias is None else layer.bias.detach()
        rows = _product(torch.ops.mkldnn._reorder_linear_weight(matrix, _HINT), bias)
        cached = (key, rows if _probe(matrix, bias, rows) else None)
        layer.__dict__[attribute] = cached
    result: Callable[[torch.Tensor], torch.Tensor] | None = cached[1]
    return result


def apply_rows(rows: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``rows`` over the last dimension of ``x``; a lone row computed as the first of a pair
    (oneDNN takes a matrix-vector path for one row, which rounds differently)."""
    flat = x.reshape(-1, x.shape[-1])
    result = rows(flat.expand(2, -1).contiguous())[:1] if flat.shape[0] == 1 else rows(flat)
    return result.reshape(*x.shape[:-1], result.shape[-1])


class _FrozenPackedLinear(torch.autograd.Function):
    """A frozen linear layer from packed weights, differentiable in its input only: the backward
    is ``grad @ W`` from a packed copy of ``W.T`` (built on the first backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: torch.nn.Linear, rows: Any) -> torch.Tensor:
        ctx.layer = layer
        return apply_rows(rows, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        layer: torch.nn.Linear = ctx.layer
        transposed = _packed_rows(layer, transposed=True)
        if transposed is None:
            return grad @ layer.weight.detach(), None, None
        return apply_rows(transposed, grad.contiguous()), None, None


def _packed_forward(layer: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The packed forward of ``layer``, or ``None`` if its packed product fails the probe."""
    rows = _packed_rows(layer, transposed=False)
    if rows is None:
        return None
    product = rows

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            result: torch.Tensor = _FrozenPackedLinear.apply(x, layer, product)  # type: ignore[no-untyped-call]
            return result
        return apply_rows(product, x)

    return forward


def _is_frozen_cpu_float32(layer: torch.nn.Linear) -> bool:
    weight = layer.weight
    return (
        type(weight.data) is torch.Tensor
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not weight.requires_grad
    )


def frozen_products(
    layer: torch.nn.Linear,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None:
    """``(x -> x @ W.T + bias, g -> g @ W)`` of a frozen float32 CPU ``layer`` from its packed
    copies (built or taken from the layer's cache; the one of ``W.T`` on first use), or ``None``
    when the oneDNN ops are not ``available``, the layer does not qualify or its packed forward fails the probe (a
    packed ``W.T`` that fails falls back to ``g @ W``). Used by ``head.py`` to compute the output
    layer in row chunks."""
    if not available() or not _is_frozen_cpu_float32(layer):
        return None
    forward = _packed_rows(layer, transposed=False)
    if forward is None:
        return None
    fwd = forward

    def input_grad(g: torch.Tensor) -> torch.Tensor:
        transposed = _packed_rows(layer, transposed=True)
        if transposed is None:
            return g @ layer.weight.detach()
        return apply_rows(transposed, g.contiguous())

    return (lambda x: apply_rows(fwd, x)), input_grad


def _frozen_linears(model: Any, adapters: Collection[str]) -> list[torch.nn.Linear]:
    """Every ``nn.Linear`` of ``model`` with a frozen float32 weight that is a plain CPU tensor (not
    a sharded ``DTensor``: FSDP gathers those only inside its own forward) and that is either not a
    LoRA factor or a factor of one of ``adapters``."""
    factor_of: dict[int, str] = {}
    every = module_walk.modules(model)
    for module in every:
        for name in ("lora_A", "lora_B"):
            table = module._modules.get(name)  # not ``getattr``: a missing module attribute raises, slowly
            if isinstance(table, torch.nn.ModuleDict):
                factor_of.update((id(factor), adapter) for adapter, factor in table.items())
    return [
        m
        for m in every
        if type(m) is torch.nn.Linear
        and (id(m) not in factor_of or factor_of[id(m)] in adapters)
        and _is_frozen_cpu_float32(m)
    ]


@contextmanager
def packed_linears(model: Any, adapters: Collection[str] = (), enabled: bool = True) -> Iterator[int]:
    """Within: ``model``'s frozen float32 CPU linear layers, and the LoRA factors of ``adapters``
    (the sampler's, so that their products are row-independent too), compute from packed weights
    (see the module docstring); yields how many layers are packed (0 when not ``enabled``, the
    ``TorchSettings.packed_weights`` switch, or the ops are not ``available``).
    Under autograd the layers stay differentiable in their inputs (``_FrozenPackedLinear``: the input
    gradient from a packed ``W.T``), so a training forward and backward can run within too; their
    weights get no gradient (they are frozen)."""
    swaps = []
    if enabled and available():
        for layer in _frozen_linears(model, adapters):
            forward = _packed_forward(layer)
            if forward is not None:
                swaps.append((layer, forward))
    with swapped_forwards(swaps) as count:
        yield count
