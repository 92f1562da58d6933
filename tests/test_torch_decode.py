"""The fused decode step (``fast/fused_decode.py``) against the plain path through transformers.

* the step is built for tiny Llama and tiny Qwen3 and is what the decode loop calls for every step
  after the prompt pass;
* fused vs plain (``TorchSettings.fused_decode`` off, the model's own forward): the same tokens,
  stop reasons, sampled logprobs, prompt logprobs and top-k prompt logprobs, bit for bit (the
  step runs the same tensor operations in the same order), for requests mixing adapters, stops,
  top-k/top-p, temperatures and prompt-logprob options, with merged adapters and without;
* batch invariance (SMP-12) with the fused step: each request alone vs all batched, mixed adapters,
  on 1 and 2 threads, bit for bit where the sampler is (``BIT_EXACT``);
* other architectures (Qwen3-MoE, a non-SiLU MLP) and hooked modules keep the plain path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import test_torch_sampler as batch_tests
import torch
from test_torch_sampler import BIT_EXACT, CPU, SETTINGS, alone, assert_same, mixed_items

from tinker_std.backends.torch import sampler
from tinker_std.backends.torch.fast import fused_decode
from tinker_std.types import SampleResponse

Setup = tuple[Any, Any, Any]
setup = batch_tests.setup  # tiny Llama and tiny Qwen3 with adapters ``a`` and ``b`` (``b`` also on lm_head)

FUSED = dataclasses.replace(SETTINGS, fused_decode=True)
PLAIN = dataclasses.replace(SETTINGS, fused_decode=False)


def _responses(got: list[SampleResponse | Exception]) -> list[SampleResponse]:
    for i, g in enumerate(got):
        assert isinstance(g, SampleResponse), f"item {i}: {g!r}"
    return [g for g in got if isinstance(g, SampleResponse)]


@pytest.fixture
def step_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``FusedStep`` (the rows of each call)."""
    calls: list[int] = []
    original = fused_decode.FusedStep.__call__

    def counted(self: Any, input_ids: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(int(input_ids.shape[0]))
        return original(self, input_ids, *args)

    monkeypatch.setattr(fused_decode.FusedStep, "__call__", counted)
    return calls


def test_the_loop_decodes_through_the_fused_step(setup: Setup, step_calls: list[int]) -> None:
    model, tokenizer, spec = setup
    assert fused_decode.fused_step(model) is not None, type(model).__name__
    items = mixed_items(tokenizer, spec)
    longest = max(item.request.sampling_params.max_tokens or 0 for item in items)
    _responses(sampler.sample_batch(model, items, tokenizer, CPU, FUSED))
    assert 0 < len(step_calls) <= longest - 1, step_calls  # one call per step after the prompt pass
    step_calls.clear()
    _responses(sampler.sample_batch(model, items, tokenizer, CPU, PLAIN))
    assert step_calls == [], "the switch did not turn the fused step off"


@pytest.mark.parametrize("merged_lora", [True, False], ids=["merged", "unmerged"])
def test_fused_gives_the_plain_paths_bits(setup: Setup, step_calls: list[int], merged_lora: bool) -> None:
    model, tokenizer, spec = setup
    items = mixed_items(tokenizer, spec)
    fused = dataclasses.replace(FUSED, merged_lora=merged_lora)
    plain = dataclasses.replace(PLAIN, merged_lora=merged_lora)
    got = _responses(sampler.sample_batch(model, items, tokenizer, CPU, fused))
    assert step_calls, "the fused step was not used"
    want = _responses(sampler.sample_batch(model, items, tokenizer, CPU, plain))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same(g, w, f"item {i} fused vs plain ({'merged' if merged_lora else 'unmerged'})", exact=True)
    got_alone = [alone(setup, item, fused) for item in items[:3]]
    want_alone = [alone(setup, item, plain) for item in items[:3]]
    for i, (g, w) in enumerate(zip(got_alone, want_alone, strict=True)):
        assert_same(g, w, f"item {i} alone fused vs plain", exact=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_batch_is_invariant(setup: Setup, step_calls: list[int], threads: int) -> None:
    model, tokenizer, spec = setup
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        items = mixed_items(tokenizer, spec)
        want = [alone(setup, item, FUSED) for item in items]
        got = _responses(sampler.sample_batch(model, items, tokenizer, CPU, FUSED))
    finally:
        torch.set_num_threads(before)
    assert step_calls
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same(g, w, f"item {i} ({threads} threads)", exact=BIT_EXACT)


def test_a_hooked_module_keeps_the_plain_path(setup: Setup) -> None:
    model, _, _ = setup
    mlp = model.model.layers[0].mlp
    handle = mlp.register_forward_hook(lambda module, inputs, output: output)
    try:
        assert fused_decode.fused_step(model) is None
    finally:
        handle.remove()
    assert fused_decode.fused_step(model) is not None


def test_other_architectures_keep_the_plain_path() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    small = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    moe = Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            **small,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
        )
    )
    assert fused_decode.fused_step(moe) is None
    llama = {**small, "intermediate_size": 64, "num_key_value_heads": 2}
    assert fused_decode.fused_step(LlamaForCausalLM(LlamaConfig(**llama))) is not None
    assert fused_decode.fused_step(LlamaForCausalLM(LlamaConfig(**llama, hidden_act="gelu"))) is None
