"""Sampled adapters merged into their own oneDNN-packed weights, for the decode loop.

peft computes a LoRA layer as ``base(x) + lora_B(lora_A(x)) * scaling``: per layer and decode step
one base product, two rank-r products, a scaling and an addition, each a separate call (about 14
calls per decode step and transformer layer, 420 for SmolLM2, plus peft's per-call bookkeeping).
For sampling the adapters are frozen, so ``merged_lora_linears`` computes each sampled adapter's
LoRA layers from a merged copy instead, ``W' = W + scaling * B @ A`` (one float32 ``addmm``),
packed like the frozen base weights (``packed.py``; the base layer's probe, same shape, stands for
the merged copy's): one row-independent product per layer, no factor products at all. A new
adapter version (an RL loop samples new weights every step) costs about 0.25 s to merge and pack
for SmolLM2 on one core.

Contract (what the sampler's batch invariance needs):

* a row's output depends only on the row and on its adapter's merged weight: every product is a
  probed, packed one (row-independent for any number of rows), and in a batch that mixes adapters
  each layer runs one product per run of rows of the same adapter (``row_segments.RowSegments``),
  so a row gives the same bits whatever else is in the batch and however the rows are grouped;
* the merged weights are used whenever packing is on (also for a batch of one adapter), never only
  in some batches;
* rebuilding a merged weight gives the same bits (the same ``addmm`` on the same tensors, with
  the same thread count: the thread count is part of the cache key, as in ``packed.py``);
* a (layer, adapter) whose merged product fails the probe is computed as ``base(x) +
  lora_B(lora_A(x)) * scaling`` from the layer's modules (the factors packed by the sampler where
  they pass the probe), which depends on the weights and the thread count only, so it is the same
  in every batch too;
* rows of no adapter (``None``), or of an adapter a layer does not have, use the layer's base.

Logprobs differ from the unmerged computation by float rounding only (about 1e-7 relative).

Sibling layers that a decoder layer calls on one input (``q_proj``, ``k_proj``, ``v_proj``; ``gate_proj``,
``up_proj``: ``_GROUPS``) share one joint product per adapter: their merged weights stacked by output
rows, packed and probed as one (``_joint``). The first sibling called on an input computes it, the
others take their columns from a memo (``_Memo``: the same input, compared by content). At 8 rows
that saves a call and a pass over the input per sibling (SmolLM2, one request of 8 x 32 tokens: 5%
of its time); memory is unchanged (the joint copy replaces the siblings' own). A row's result is
still its adapter's joint product on that row, whatever the batch; columns of oneDNN's packed
product were also bit-equal to the layer's own product where measured
(``tests/test_torch_merged_joint.py``).

Memory: one packed copy of every adapted layer per cached adapter (SmolLM2-135M, attention + MLP:
about 0.42 GB; with ``lm_head`` 0.11 GB more). The cache lives on the model, keyed per adapter by
the thread count and the data pointers and version counters of every base weight and factor, so a
changed adapter is rebuilt on its next use; it keeps the ``capacity`` most recently sampled
adapters (``TorchSettings.merged_adapters``, ``TINKER_STD_MERGED_ADAPTERS``, default 2) besides those
of the batch being decoded, which are always all built. ``forget`` drops an adapter
(``adapters.delete_adapter`` calls it). ``TorchSettings.merged_lora`` (``TINKER_STD_MERGED_LORA=0``)
or ``packed_weights`` off turns merging off; the sampler then computes the factors separately.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import module_walk, packed
from .forward_swap import swapped_forwards

__all__ = ["cached_adapters", "forget", "joint_columns", "merged_lora_linears"]

Rows = Callable[[torch.Tensor], torch.Tensor]
#: ``(start, stop, adapter, length)`` batch segments, as ``row_segments.Segment``.
Segments = Callable[[], Sequence[tuple[int, int, str | None, int | None]]]

_CACHE = "_tinker_std_merged"


#: Sibling LoRA layers that the stock decoder layers (Llama, Qwen3, ...) call on one input tensor.
_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass
class _Entry:
    """One adapter's merged products: ``products[id(layer)]`` (``None``: failed the probe), and for
    each group of sibling layers (``_GROUPS``) whose joint product passed the probe,
    ``joints[id(layer)]``: that product and the layer's columns of it (its members then have no
    entry in ``products``)."""

    key: tuple[Any, ...]
    products: dict[int, Rows | None]
    joints: dict[int, tuple[Rows, int, int]] = field(default_factory=dict)


def _cache(model: Any) -> OrderedDict[str, _Entry]:
    cache: OrderedDict[str, _Entry] | None = model.__dict__.get(_CACHE)
    if cache is None:
        cache = OrderedDict()
        model.__dict__[_CACHE] = cache  # in ``__dict__``: not a module attribute
    return cache


def cached_adapters(model: Any) -> list[str]:
    """The adapters whose merged weights are cached on ``model``, least recently used first."""
    return list(_cache(model))


def forget(model: Any, name: str) -> None:
    """Drop adapter ``name``'s merged weights (a no-op when none are cached)."""
    _cache(model).pop(name, None)


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module_walk.modules(model) if isinstance(m, LoraLayer)]


def _mergeable(layer: Any, names: Collection[str]) -> bool:
    """A plain peft LoRA ``Linear`` over a frozen float32 CPU ``nn.Linear``, unmerged, whose
    adapters among ``names`` have no dropout, variant or factor bias."""
    from peft.tuners.lora import Linear

    base = getattr(layer, "base_layer", None)
    if not (isinstance(layer, Linear) and type(base) is torch.nn.Linear and not layer.merged):
        return False
    weight = base.weight
    if not (
        type(weight.data) is torch.Tensor
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not weight.requires_grad
        and getattr(layer, "fan_in_fan_out", False) is False
    ):
        return False
    for name in names:
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name], layer.lora_B[name]
        if (
            name in getattr(layer, "lora_variant", {})
            or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
            or type(a) is not torch.nn.Linear
            or type(b) is not torch.nn.Linear
            or a.bias is not None
            or b.bias is not None
            or a.weight.dtype != torch.float32
            or b.weight.dtype != torch.float32
        ):
            return False
    return True


def _key(layers: Sequence[Any], name: str) -> tuple[Any, ...]:
    parts: list[Any] = [torch.get_num_threads()]
    for layer in layers:
        weight, a, b = layer.base_layer.weight, layer.lora_A[name].weight, layer.lora_B[name].weight
        parts.append(
            (id(layer), weight.data_ptr(), weight._version, a.data_ptr(), a._version, b.data_ptr(), b._version)
        )
        parts.append(float(layer.scaling[name]))
    return tuple(parts)


def _merge(layer: Any, name: str) -> Rows | None:
    """The packed, probed product of ``W + scaling * B @ A`` (``None``: failed the probe), one
    float32 ``addmm``; the probe of the base layer's packed copy (same shape) stands for it."""
    base: torch.nn.Linear = layer.base_layer
    a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
    merged = torch.addmm(base.weight.detach(), b, a, alpha=float(layer.scaling[name]))
    bias = None if base.bias is None else base.bias.detach()
    return packed.packed_product(merged, bias, like=base)


def _groups(model: Any, layers: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The groups of sibling LoRA layers of ``model`` named as in ``_GROUPS`` (all present)."""
    lora = {id(layer) for layer in layers}
    groups: list[tuple[Any, ...]] = []
    for module in module_walk.modules(model):
        for names in _GROUPS:
            members = tuple(module._modules.get(name) for name in names)
            if all(m is not None and id(m) in lora for m in members):
                groups.append(members)
    return groups


def _joint(group: Sequence[Any], name: str) -> Rows | None:
    """The packed, probed product of the group's merged weights stacked by output rows
    (``torch.cat`` of each layer's ``_merge`` weight: a row's outputs are the layers' outputs side by
    side), or ``None`` where the group cannot share one (another input size, mixed biases) or it
    fails the probe. One product instead of two or three: each costs a call and a pass over ``x``."""
    bases = [layer.base_layer for layer in group]
    if len({base.in_features for base in bases}) != 1 or len({base.bias is None for base in bases}) != 1:
        return None
    weights = []
    for layer in group:
        a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
        weights.append(torch.addmm(layer.base_layer.weight.detach(), b, a, alpha=float(layer.scaling[name])))
    bias = None if bases[0].bias is None else torch.cat([base.bias.detach() for base in bases])
    return packed.packed_product(torch.cat(weights), bias)


def _build(layers: Sequence[Any], groups: Sequence[tuple[Any, ...]], key: tuple[Any, ...], name: str) -> _Entry:
    """Adapter ``name``'s entry: the joint product of every group whose layers all have it, each
    other layer's own merged product."""
    joints: dict[int, tuple[Rows, int, int]] = {}
    for group in groups:
        if all(name in layer.lora_A for layer in group):
            rows = _joint(group, name)
            if rows is not None:
                start = 0
                for layer in group:
                    stop = start + layer.base_layer.out_features
                    joints[id(layer)] = (rows, start, stop)
                    start = stop
    products = {id(layer): _merge(layer, name) for layer in layers if id(layer) not in joints}
    return _Entry(key, products, joints)


def _entries(model: Any, layers: Sequence[Any], names: Collection[str], capacity: int) -> dict[str, _Entry]:
    """The (built or cached) merged products of every adapter in ``names``; the cache then holds
    those and at most ``capacity`` others, the most recently used."""
    cache = _cache(model)
    entries: dict[str, _Entry] = {}
    groups = _groups(model, layers) if names else []
    for name in names:
        own = [layer for layer in layers if name in layer.lora_A]
        key = _key(own, name)
        entry = cache.get(name)
        if entry is None or entry.key != key:
            cache.pop(name, None)
            entry = _build(own, groups, key, name)
        cache[name] = entry
        cache.move_to_end(name)
        entries[name] = entry
    while len(cache) > len(entries) + capacity:
        stale = next(name for name in cache if name not in entries)
        del cache[stale]
    return entries


def _unmerged(layer: Any, name: str) -> Rows:
    """``base(x) + lora_B(lora_A(x)) * scaling``, peft's operations, from the layer's modules."""
    base, lora_a, lora_b, scaling = layer.base_layer, layer.lora_A[name], layer.lora_B[name], layer.scaling[name]

    def rows(x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = base(x) + lora_b(lora_a(x)) * scaling
        return result

    return rows


def _products(layer: Any, entries: dict[str, _Entry], memos: dict[int, _Memo]) -> dict[str | None, Rows]:
    """Each adapter's product for ``layer`` (key ``None``: the base, for rows of no adapter);
    ``memos``: one per joint product, shared by the layers of its group (see ``_Memo``)."""
    base = layer.base_layer

    def base_rows(x: torch.Tensor) -> torch.Tensor:  # a function: a module assigned to ``forward`` would register
        result: torch.Tensor = base(x)
        return result

    products: dict[str | None, Rows] = {None: base_rows}
    for name, entry in entries.items():
        if name not in layer.lora_A:
            products[name] = base_rows
            continue
        joint = entry.joints.get(id(layer))
        if joint is not None:
            rows, start, stop = joint
            if id(rows) not in memos:
                memos[id(rows)] = _Memo([(a, b) for r, a, b in entry.joints.values() if r is rows])
            products[name] = _Columns(rows, memos[id(rows)], start, stop)
            continue
        merged = entry.products[id(layer)]
        if merged is None:
            products[name] = _unmerged(layer, name)
        else:
            products[name] = _applied(merged)
    return products


class _Memo:
    """The pending ``(input, joint output)`` pairs of one joint product: the layers of a group are
    called one after another on the same rows (``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)``), so the
    first computes the product and the others take their columns of it; a pair is dropped once
    every layer of the group took its columns (a prompt pass's outputs are large), and at most
    ``SIZE`` are kept. An input counts as the same when it is at the same address with the same
    shape and dtype and equal to a copy taken when the output was computed (inference tensors have
    no version counter to tell an in-place change), so the memo changes no result; a copy and a
    comparison cost far less than a product."""

    SIZE = 4

    def __init__(self, members: Collection[tuple[int, int]]) -> None:
        self.members = frozenset(members)  # each layer's (start, stop) columns
        self.pairs: list[tuple[tuple[Any, ...], torch.Tensor, torch.Tensor, set[tuple[int, int]]]] = []

    def columns(self, rows: Rows, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        key = (x.data_ptr(), x.shape, x.dtype)
        for i, (known, copy, out, waiting) in enumerate(self.pairs):
            if known == key and (start, stop) in waiting and torch.equal(copy, x):
                waiting.discard((start, stop))
                if not waiting:
                    del self.pairs[i]
                return out[..., start:stop]
        out = packed.apply_rows(rows, x)
        waiting = set(self.members - {(start, stop)})
        if waiting:
            self.pairs = [*self.pairs[-(self.SIZE - 1) :], (key, x.clone(), out, waiting)]
        return out[..., start:stop]


class _Columns:
    """A grouped layer's forward for one adapter: columns ``start:stop`` of the group's joint
    product ``rows`` (computed once per input, ``_Memo``). A plain object, never a module."""

    def __init__(self, rows: Rows, memo: _Memo, start: int, stop: int) -> None:
        self.rows, self.memo, self.start, self.stop = rows, memo, start, stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.memo.columns(self.rows, x, self.start, self.stop)


def joint_columns(forward: object) -> tuple[Rows, int, int] | None:
    """``(joint product, start, stop)`` when ``forward`` (a layer's swapped forward) computes every
    row as columns ``start:stop`` of that product (``packed.apply_rows(product, x)``), else
    ``None``: a caller that has all of a group's layers may compute the product once itself and
    slice (``fused_decode.py``), the same bits as calling the layers."""
    if isinstance(forward, _Columns):
        return forward.rows, forward.start, forward.stop
    return None


def _applied(rows: Rows) -> Rows:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return packed.apply_rows(rows, x)

    return forward


def _forward(products: dict[str | None, Rows], name: str | None, segments: Segments | None) -> Rows:
    """The layer's forward: with ``segments`` (a mixed batch) one product per run of consecutive
    rows whose adapters share one, joined with ``cat``; without, ``name``'s product on every row."""
    if segments is None:
        return products[name]

    def forward(x: torch.Tensor) -> torch.Tensor:
        runs: list[tuple[int, int, Rows]] = []
        for start, stop, adapter, _ in segments():
            product = products[adapter]
            if runs and runs[-1][2] is product:
                runs[-1] = (runs[-1][0], stop, product)
            else:
                runs.append((start, stop, product))
        if len(runs) == 1:
            return runs[0][2](x)
        return torch.cat([product(x[start:stop]) for start, stop, product in runs])

    return forward


@contextmanager
def merged_lora_linears(
    model: Any, names: Collection[str | None], segments: Segments | None = None, *, capacity: int
) -> Iterator[bool]:
    """Within: every peft LoRA layer of ``model`` computes the sampled adapters ``names`` from
    merged, packed weights (see the module docstring). ``segments``: for a batch mixing adapters,
    a function giving the current ``(start, stop, adapter, length)`` row segments (read on every
    call, so the decode loop may change them between steps); ``None``: every row uses the one
    adapter in ``names`` (or the base when that is ``None``). ``capacity``: how many other adapters'
    merged weights stay cached (``TorchSettings.merged_adapters``). Yields whether the layers were
    switched: ``False`` (nothing changed) when the oneDNN ops are not ``packed.available()`` or
    some LoRA layer or adapter is not a plain, unmerged float32 CPU LoRA ``Linear``. Call within
    ``packed.packed_linears`` (the base layers then compute from their packed copies too); callers
    with ``TorchSettings.merged_lora`` or ``packed_weights`` off do not call it."""
    adapters = {name for name in names if name is not None}
    if segments is None and len(set(names)) > 1:
        raise ValueError("several adapters need segments")
    layers = _lora_layers(model)
    if not packed.available() or not all(_mergeable(layer, adapters) for layer in layers):
        yield False
        return
    entries = _entries(model, layers, adapters, capacity)
    single = next(iter(names), None) if segments is None else None
    memos: dict[int, _Memo] = {}
    with swapped_forwards((layer, _forward(_products(layer, entries, memos), single, segments)) for layer in layers):
        yield True
