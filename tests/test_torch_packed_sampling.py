"""The decode loop's fast paths equal its plain ones.

* oneDNN-packed base weights (``packed.py``) against the plain ``linear`` path
  (``TorchSettings.packed_weights`` off): the same seeded tokens and stop reasons, logprobs within the
  ``fp32`` class (``atol 1e-4``; two GEMM kernels round differently);
* with packing, the batch still gives every request bit for bit what it gets alone, on one thread
  (rows of equal padding attend in one SDPA call) and on two (each row attends alone);
* the probe refuses a product whose rows depend on each other, and a lone row is computed as the
  first row of a pair.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import test_torch_sampler as batch_tests
import torch
from test_torch_sampler import BIT_EXACT, CPU, SETTINGS, alone, assert_same, mixed_items

from tinker_std.backends.torch import sampler
from tinker_std.backends.torch.fast import packed
from tinker_std.types import SampleResponse

Setup = tuple[Any, Any, Any]
setup = batch_tests.setup  # the same fixture: tiny Llama and tiny Qwen3 with two adapters


def test_packed_weights_sample_what_the_plain_path_samples(setup: Setup) -> None:
    model, tokenizer, spec = setup
    with torch.inference_mode(), packed.packed_linears(model) as count:
        assert count > 0, "no layer was packed on this CPU"
    items = mixed_items(tokenizer, spec)
    fast = sampler.sample_batch(model, items, tokenizer, CPU, dataclasses.replace(SETTINGS, packed_weights=True))
    with torch.inference_mode(), packed.packed_linears(model, enabled=False) as count:
        assert count == 0
    plain = sampler.sample_batch(model, items, tokenizer, CPU, dataclasses.replace(SETTINGS, packed_weights=False))
    for i, (f, p) in enumerate(zip(fast, plain, strict=True)):
        assert isinstance(f, SampleResponse) and isinstance(p, SampleResponse), i
        assert_same(f, p, f"item {i} packed vs plain", exact=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_packed_batch_is_still_invariant(setup: Setup, threads: int) -> None:
    model, tokenizer, spec = setup
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        items = mixed_items(tokenizer, spec)[:5]
        want = [alone(setup, item) for item in items]
        got = sampler.sample_batch(model, items, tokenizer, CPU, SETTINGS)
    finally:
        torch.set_num_threads(before)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert isinstance(g, SampleResponse), f"item {i}: {g!r}"
        assert_same(g, w, f"item {i} ({threads} threads)", exact=BIT_EXACT)


def test_probe_refuses_rows_that_depend_on_each_other() -> None:
    weight = torch.randn(48, 32, generator=torch.Generator().manual_seed(3))

    def honest(x: torch.Tensor) -> torch.Tensor:  # row by row: independent by construction
        return torch.stack([weight @ row for row in x])

    def coupled(x: torch.Tensor) -> torch.Tensor:  # every row sees the batch mean
        return honest(x) + 1e-3 * x.mean(0, keepdim=True)[:, :1]

    def wrong(x: torch.Tensor) -> torch.Tensor:  # row-independent but not the layer's product
        return honest(x) + 1.0

    assert packed._probe(weight, None, honest)
    assert not packed._probe(weight, None, coupled)
    assert not packed._probe(weight, None, wrong)


def test_a_lone_row_is_computed_as_a_pair() -> None:
    layer = torch.nn.Linear(64, 96).requires_grad_(False)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), packed.packed_linears(layer) as count:
        if count == 0:
            pytest.skip("oneDNN packing unavailable or refused on this CPU")
        pair = layer(torch.stack([x[0], x[0]]))
        lone = layer(x[:1])
    assert torch.equal(lone, pair[:1])
    torch.testing.assert_close(lone, torch.nn.functional.linear(x[:1], layer.weight, layer.bias), rtol=1e-4, atol=1e-4)
    assert "forward" not in layer.__dict__  # restored on exit


def test_only_the_sampled_adapters_factors_are_packed(setup: Setup) -> None:
    """The sampler packs the LoRA factors of the adapters it samples (so their products are
    row-independent too), and no other adapter's."""
    model, _, _ = setup
    factors = {
        name: sum(
            2
            for m in model.modules()
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and name in m.lora_A
        )
        for name in ("a", "b")
    }
    with torch.inference_mode():
        with packed.packed_linears(model) as base:
            pass
        with packed.packed_linears(model, {"a"}) as with_a:
            pass
        with packed.packed_linears(model, {"a", "b"}) as with_both:
            pass
    assert factors["a"] > 0 and factors["b"] > factors["a"]  # b also adapts lm_head
    assert (with_a, with_both) == (base + factors["a"], base + factors["a"] + factors["b"])
