"""Joint merged products of sibling LoRA layers (``merged.py``: q/k/v and gate/up of a decoder layer).

* every sampled adapter's q/k/v and gate/up layers compute from one joint product per group, and a
  decode step computes each joint product once per run of rows (the siblings take their columns);
* a layer's output is its columns of the joint product on exactly its input: also when the input
  changed in place between the sibling calls (the memo compares contents; it lets a joint output go
  once every sibling took its columns), and bit-identical to
  the layer computed from its own merged product (columns of oneDNN's packed product do not
  depend on the other output rows of the weight: checked here, not assumed by batch invariance,
  which ``test_torch_merged.py`` checks with the joint products in place).
"""

from __future__ import annotations

from typing import Any

import pytest
import test_torch_sampler as batch_tests
import torch
from test_torch_sampler import SETTINGS, alone, mixed_items

from tinker_std.backends.torch.fast import merged, packed

Setup = tuple[Any, Any, Any]
setup = batch_tests.setup  # tiny Llama and tiny Qwen3 with adapters ``a`` and ``b`` (``b`` also on lm_head)

pytestmark = pytest.mark.skipif(
    not (packed.available() and SETTINGS.packed_weights and SETTINGS.merged_lora),
    reason="oneDNN packing unavailable or turned off",
)

SIBLINGS = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}


def _siblings(model: Any, adapter: str) -> dict[int, str]:
    """id -> name of every LoRA layer of ``adapter`` that belongs to a joint group."""
    return {
        id(module): name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in SIBLINGS and adapter in getattr(module, "lora_A", {})
    }


def test_sibling_layers_compute_from_one_joint_product(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer, spec = setup
    item = mixed_items(tokenizer, spec)[0]  # adapter "a": attention and MLP
    assert item.adapter == "a"
    for name in merged.cached_adapters(model):
        merged.forget(model, name)
    alone(setup, item)
    entry = model.__dict__[merged._CACHE]["a"]
    siblings = _siblings(model, "a")
    assert siblings and set(entry.joints) == set(siblings), "not every q/k/v, gate/up layer has a joint product"
    assert not set(entry.products) & set(siblings), "a grouped layer kept its own merged copy as well"
    joints = {id(rows) for rows, _, _ in entry.joints.values()}
    assert len(joints) == len(siblings) * 2 // 5, "one joint product per q/k/v group and per gate/up group"

    computed: list[int] = []
    real = packed.apply_rows
    monkeypatch.setattr(
        merged.packed, "apply_rows", lambda rows, x: computed.append(id(rows) in joints) or real(rows, x)
    )
    alone(setup, item)
    layers = len(siblings) // 5
    steps = item.request.sampling_params.max_tokens or 0  # the prompt pass and max_tokens - 1 steps, no stop
    assert computed.count(True) == layers * 2 * steps, "a sibling recomputed the joint product"


def test_a_layer_gets_its_columns_of_its_own_input(setup: Setup) -> None:
    model, _, _ = setup
    layer = model.model.layers[0]
    q, k, v = layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj
    width = q.base_layer.in_features
    torch.manual_seed(0)
    with torch.inference_mode(), packed.packed_linears(model, {"a"}):
        with merged.merged_lora_linears(model, ["a"], capacity=2) as on:
            assert on
            x = torch.randn(4, 1, width)
            want_q, want_k = q(x.clone()), k(x.clone())
            got_q = q(x)
            x.mul_(2.0)  # an in-place change between the sibling calls: not the memo's input any more
            got_k, want_k2, got_v = k(x), k(x.clone()), v(x)
            memo = q.forward.memo
            memo.pairs.clear()
            y = torch.randn(4, 1, width)
            q(y), k(y)
            assert len(memo.pairs) == 1, "the joint output is kept until every sibling took its columns"
            v(y)
            assert memo.pairs == [], "a joint output outlived its last sibling's call"
        assert torch.equal(got_q, want_q) and torch.equal(want_k2, got_k)
        assert not torch.equal(got_k, want_k)
        own = {name: merged._merge(module, "a") for name, module in (("k", k), ("v", v))}
    assert own["k"] is not None and own["v"] is not None
    assert torch.equal(got_k, packed.apply_rows(own["k"], x)), "joint columns differ from the layer's own product"
    assert torch.equal(got_v, packed.apply_rows(own["v"], x))


def test_the_fused_step_computes_each_joint_product_once(setup: Setup) -> None:
    """With one adapter's merged weights, the fused decode step takes q/k/v and gate/up from the
    joint products directly (no memo); in a batch mixing adapters it calls the layers."""
    from tinker_std.backends.torch.fast import fused_decode

    model, _, _ = setup
    with torch.inference_mode(), packed.packed_linears(model, {"a", "b"}):
        with merged.merged_lora_linears(model, ["a"], capacity=2):
            step = fused_decode.fused_step(model)
            assert step is not None
            assert all(layer.qkv is not None and layer.gate_up is not None for layer in step._layers)
        with merged.merged_lora_linears(model, ["a", "b"], lambda: [(0, 4, "a", None)], capacity=2):
            step = fused_decode.fused_step(model)
            assert step is not None
            assert all(layer.qkv is None and layer.gate_up is None for layer in step._layers)
