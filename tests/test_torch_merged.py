"""The decode loop's merged adapter weights (``merged.py``) keep its contracts.

* they are used for every sampled adapter, alone and in a batch that mixes adapters;
* batch invariance: with them a request gets bit for bit what it gets alone (mixed adapters, on 1
  and 2 threads), also when every merged product is refused by the probe (the unmerged fallback);
* merged vs unmerged (``TorchSettings.merged_lora`` off): the same seeded tokens, logprobs within the
  ``fp32`` class (the merged sum rounds differently);
* rebuilding the cache (forgotten, evicted, or the adapter's tensors changed and changed back)
  gives the same bits; the cache keeps at most ``TorchSettings.merged_adapters`` adapters besides the batch's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import test_torch_sampler as batch_tests
import torch
from test_torch_sampler import BIT_EXACT, CPU, SETTINGS, alone, assert_same, mixed_items

from tinker_std.backends.torch import sampler
from tinker_std.backends.torch.fast import merged, packed
from tinker_std.types import SampleResponse

Setup = tuple[Any, Any, Any]
setup = batch_tests.setup  # tiny Llama and tiny Qwen3 with adapters ``a`` and ``b`` (``b`` also on lm_head)

pytestmark = pytest.mark.skipif(
    not (packed.available() and SETTINGS.packed_weights and SETTINGS.merged_lora),
    reason="oneDNN packing unavailable or turned off",
)


def _forget_all(model: Any) -> None:
    for name in merged.cached_adapters(model):
        merged.forget(model, name)


def _responses(got: list[SampleResponse | Exception]) -> list[SampleResponse]:
    for i, g in enumerate(got):
        assert isinstance(g, SampleResponse), f"item {i}: {g!r}"
    return [g for g in got if isinstance(g, SampleResponse)]


def _assert_identical(got: list[SampleResponse], want: list[SampleResponse], label: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same(g, w, f"{label}: item {i}", exact=True)


def test_merged_weights_are_used_alone_and_in_mixed_batches(setup: Setup) -> None:
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    _forget_all(model)
    alone(setup, items[0])  # adapter "a" alone
    assert merged.cached_adapters(model) == ["a"]
    _forget_all(model)
    sampler.sample_batch(model, [items[2], items[4]], tokenizer, CPU, SETTINGS)  # adapter "b" only
    assert merged.cached_adapters(model) == ["b"]
    _forget_all(model)
    sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)  # None, "a" and "b"
    assert sorted(merged.cached_adapters(model)) == ["a", "b"]


@pytest.mark.parametrize("threads", [1, 2])
def test_merged_batch_is_invariant(setup: Setup, threads: int) -> None:
    model, tokenizer, spec = setup
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        items = mixed_items(tokenizer, spec)
        want = [alone(setup, item) for item in items]
        got = _responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS))
    finally:
        torch.set_num_threads(before)
    assert sorted(merged.cached_adapters(model)) == ["a", "b"]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same(g, w, f"item {i} ({threads} threads)", exact=BIT_EXACT)


def test_merged_vs_unmerged(setup: Setup) -> None:
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    fast = _responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS))
    fast_alone = [alone(setup, item) for item in items[:3]]
    unmerged = dataclasses.replace(SETTINGS, merged_lora=False)
    _forget_all(model)
    plain = _responses(sampler.sample_batch(model, items, tokenizer, CPU, unmerged))
    assert merged.cached_adapters(model) == [], "merged weights were built with merging off"
    plain_alone = [alone(setup, item, unmerged) for item in items[:3]]
    worst = 0.0
    for i, (f, p) in enumerate(zip(fast + fast_alone, plain + plain_alone, strict=True)):
        worst = max(worst, assert_same(f, p, f"item {i} merged vs unmerged", exact=False))
    print(f"merged vs unmerged: max |logprob diff| {worst:.2e}")


def test_rebuilt_merged_weights_give_the_same_bits(setup: Setup) -> None:
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    first = _responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS))
    entries = dict(model.__dict__[merged._CACHE])

    _forget_all(model)  # forgotten: rebuilt on the next call
    _assert_identical(_responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)), first, "after forget")
    assert all(model.__dict__[merged._CACHE][name] is not entries[name] for name in entries)

    a_layers = [m for m in model.modules() if "a" in getattr(m, "lora_B", {})]
    with torch.no_grad():  # changed and changed back (exactly: powers of two): a new version, the same values
        for layer in a_layers:
            layer.lora_B["a"].weight.mul_(2.0)
        changed = _responses(sampler.sample_batch(model, items[:1], tokenizer, CPU, SETTINGS))
        for layer in a_layers:
            layer.lora_B["a"].weight.div_(2.0)
    assert changed[0].sequences[0].logprobs != first[0].sequences[0].logprobs, "the changed adapter was not rebuilt"
    _assert_identical(_responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)), first, "after a change")

    none_kept = dataclasses.replace(SETTINGS, merged_adapters=0)  # only the batch's own adapters stay cached
    assert alone(setup, items[0], none_kept).sequences and merged.cached_adapters(model) == ["a"]
    assert alone(setup, items[2], none_kept).sequences and merged.cached_adapters(model) == ["b"]
    alone(setup, items[0], dataclasses.replace(SETTINGS, merged_adapters=1))
    assert merged.cached_adapters(model) == ["b", "a"]  # least recently used first
    _assert_identical(_responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)), first, "after eviction")


def test_refused_merged_products_fall_back_and_stay_invariant(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every merged product refused by the probe: each layer computes ``base + B A x s`` per
    adapter run of rows, still bit for bit the same alone and batched, the same tokens as merged."""
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    with_merged = _responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS))
    _forget_all(model)
    monkeypatch.setattr(merged.packed, "packed_product", lambda weight, bias=None, like=None: None)
    try:
        want = [alone(setup, item) for item in items]
        got = _responses(sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS))
        entries = model.__dict__[merged._CACHE]
        assert entries and all(p is None for entry in entries.values() for p in entry.products.values())
    finally:
        _forget_all(model)  # the refused entries must not outlive the patch
    for i, (g, w, m) in enumerate(zip(got, want, with_merged, strict=True)):
        assert_same(g, w, f"item {i} fallback batched vs alone", exact=BIT_EXACT)
        assert_same(g, m, f"item {i} fallback vs merged", exact=False)


@pytest.mark.skipif(not packed.available(), reason="no oneDNN packed products here")
def test_a_merged_copy_reuses_its_base_layers_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """``packed_product(like=layer)`` skips the probe only where ``layer`` (same shape, frozen)
    passed it; the product is the same either way."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 40, bias=False).requires_grad_(False)
    weight = layer.weight.detach() + 0.01 * torch.randn(40, 48)
    probes: list[int] = []
    real = packed._probe
    monkeypatch.setattr(packed, "_probe", lambda *args: probes.append(1) or real(*args))
    probed = packed.packed_product(weight)
    assert probed is not None and len(probes) == 1
    packed.frozen_products(layer)  # the base layer's own copy, probed once
    probes.clear()
    reused = packed.packed_product(weight, like=layer)
    assert reused is not None and not probes
    x = torch.randn(6, 48)
    assert torch.equal(reused(x), probed(x))
    other = torch.nn.Linear(48, 32, bias=False).requires_grad_(False)
    packed.frozen_products(other)
    probes.clear()
    assert packed.packed_product(weight, like=other) is not None and len(probes) == 1  # shape differs: probed
