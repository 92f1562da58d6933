"""Shared prefixes run once (``backends/torch/fast/prefix_layout.py``) and the head's gradient hint
(``head.py``, ``losses.gradient_positions``) change the cost of a training pass, not its result.

* The layout: every sequence reads back exactly its own tokens at positions ``0..n-1`` and each
  of its tokens attends to exactly its own earlier tokens (checked on random batches with shared,
  duplicated and nested prefixes).
* A pass over GRPO-like groups (several completions of each prompt) with the layout equals the
  plain right-padded pass (``TorchSettings.shared_prefix`` off) within the ``fp32`` class: logprobs and
  losses ``atol 1e-4``, LoRA gradients ``rtol 1e-4`` with ``atol`` 1e-5 of the tensor's largest
  entry (measured: about 3e-6 and 2e-6 relative), for every built-in loss, hard and soft targets,
  ``tiny-llama`` and ``tiny-qwen3``, SDPA and eager attention.
* The hint: the head's gradient is bit-identical with the exact hint, with none, and with a wrong
  one (rows left out that do get a gradient are computed in the backward).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backends.torch import TorchEngine
from tinker_std.backends.torch.fast import head, packed, prefix_layout
from tinker_std.checkpoints import CheckpointStore
from tinker_std.losses import gradient_positions
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput

from _support import LOSS_CONFIGS as LOSSES
from _support import engine_pass


def check_layout(sequences: list[list[int]], layout: prefix_layout.RowLayout) -> None:
    _, width = layout.input_ids.shape
    ids, pos = layout.input_ids.reshape(-1), layout.position_ids.reshape(-1)
    assert len(layout.positions) == len(sequences)
    for seq, flat in zip(sequences, layout.positions, strict=True):
        assert ids[flat].tolist() == seq
        assert pos[flat].tolist() == list(range(len(seq)))
        row = int(flat[0]) // width
        assert bool((flat // width == row).all()), "a sequence spans two rows"
        cols = flat - row * width
        for q in range(len(seq)):
            seen = torch.nonzero(layout.allowed[row, cols[q]]).flatten().tolist()
            assert seen == sorted(cols[: q + 1].tolist()), f"position {q} of {seq} attends to {seen}"
    assert bool(layout.allowed.any(-1).all()), "a query (padding included) attends to nothing"


def test_each_sequence_sees_exactly_its_own_tokens() -> None:
    rng = random.Random(0)
    used = 0
    for _ in range(300):
        stem = [rng.randint(0, 5) for _ in range(rng.randint(1, 30))]
        sequences = []
        for _ in range(rng.randint(2, 8)):
            k = rng.randint(0, len(stem))
            tail = [rng.randint(0, 5) for _ in range(rng.randint(0 if k else 1, 15))]
            sequences.append(stem[:k] + tail)
        sequences.append(list(sequences[0]))  # a duplicate
        layout = prefix_layout.plan(sequences)
        if layout is not None:
            check_layout(sequences, layout)
            used += 1
    assert used > 50, f"only {used} of 300 batches were laid out as trees"


def test_layout_is_used_where_it_saves_and_rows_stay_bounded() -> None:
    rng = np.random.default_rng(1)
    distinct = [rng.integers(0, 1000, 40).tolist() for _ in range(6)]
    assert prefix_layout.plan(distinct) is None
    prompt = rng.integers(0, 1000, 32).tolist()
    group = [prompt + rng.integers(0, 1000, 8).tolist() for _ in range(4)]
    layout = prefix_layout.plan(group)
    assert layout is not None and tuple(layout.input_ids.shape) == (1, 32 + 4 * 8)
    check_layout(group, layout)
    # a long prompt with many completions: rows hold at most twice the longest sequence
    long_prompt = rng.integers(0, 1000, 300).tolist()
    many = [long_prompt + rng.integers(0, 1000, 200).tolist() for _ in range(6)]
    layout = prefix_layout.plan(many)
    assert layout is not None and tuple(layout.input_ids.shape) == (2, 300 + 3 * 200)  # the cap: 2 x 500
    check_layout(many, layout)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    cache = tmp_path_factory.getbasetemp() / "tinker-std-cache"
    eng = TorchEngine(CheckpointStore(tmp_path_factory.mktemp("ckpt")), device="cpu", cache_dir=cache)
    yield eng
    eng.close()


def groups(vocab: int, loss: str, soft: bool) -> list[Datum]:
    """Two prompts x three completions, one completion repeated and one datum a prefix of
    another; prompt positions have zero weight or advantage, as an RL datum's have."""
    rng = np.random.default_rng(5)
    sequences = []
    for length in (20, 27):
        prompt = rng.integers(0, vocab, length).tolist()
        completions = [rng.integers(0, vocab, 7).tolist() for _ in range(3)]
        sequences += [(prompt, c) for c in completions]
    sequences.append(sequences[0])
    sequences.append((sequences[1][0], sequences[1][1][:3]))
    data = []
    for prompt, completion in sequences:
        tokens = prompt + completion
        n, start = len(tokens) - 1, len(prompt) - 1
        targets: Any = tokens[1:]
        shape: tuple[int, ...] = (n,)
        if soft:
            targets = [[t, (t * 7 + 3) % vocab, 5] for t in tokens[1:]]
            shape = (n, 3)
        gate = np.zeros(shape)
        gate[start:] = rng.normal(size=(n - start, *shape[1:]))
        inputs: dict[str, Any] = {"target_tokens": targets}
        if loss == "cross_entropy":
            inputs["weights"] = np.abs(gate).tolist()
        else:
            # near the current logprobs, as a sampler's are
            inputs["logprobs"] = rng.uniform(-6.0, -5.0, shape).tolist()
            inputs["advantages"] = gate.tolist()
        data.append(Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs))
    return data


def run(
    engine: TorchEngine, model_id: str, data: list[Datum], loss: str, shared: bool
) -> tuple[list[np.ndarray], float, dict[str, np.ndarray]]:
    return engine_pass(engine, model_id, data, loss, {"shared_prefix": shared})


@pytest.mark.parametrize(
    ("model", "attention"), [("tiny-llama", "sdpa"), ("tiny-qwen3", "sdpa"), ("tiny-llama", "eager")]
)
def test_shared_prefix_pass_equals_the_plain_one(
    engine: TorchEngine, model: str, attention: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = engine.create_model(model, LoraConfig(rank=4, seed=3)).model_id
    base = engine.bases.loaded[model]
    for _ in range(2):  # non-zero lora_B, so every LoRA factor gets a gradient
        engine.forward_backward(model_id, groups(base.vocab_size, "cross_entropy", False), "cross_entropy", {}, True)
        engine.optim_step(model_id, AdamParams(learning_rate=1e-2))
    monkeypatch.setattr(base.model.config, "_attn_implementation", attention)
    assert engine.passes.shares_prefixes(base.model)
    for loss in LOSSES:
        for soft in (False, True):
            data = groups(base.vocab_size, loss, soft)
            layout = prefix_layout.plan([d.model_input.to_ints() for d in data])
            assert layout is not None and layout.input_ids.numel() < 0.6 * sum(d.model_input.length for d in data)
            shared = run(engine, model_id, data, loss, True)
            plain = run(engine, model_id, data, loss, False)
            label = f"{model} {attention} {loss} soft={soft}"
            for i, (a, b) in enumerate(zip(shared[0], plain[0], strict=True)):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-4, err_msg=f"{label} datum {i} logprobs")
            np.testing.assert_allclose(shared[1], plain[1], rtol=1e-5, atol=1e-4, err_msg=f"{label} loss")
            assert shared[2].keys() == plain[2].keys()
            for name, want in plain[2].items():
                scale = float(np.abs(want).max())
                assert scale > 0, f"{label}: {name} got no gradient"
                np.testing.assert_allclose(
                    shared[2][name], want, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{label} {name} gradient"
                )


@pytest.mark.parametrize("hint", ["exact", "wrong"])
def test_the_gradient_hint_changes_the_cost_not_the_gradient(engine: TorchEngine, hint: str) -> None:
    split = head.output_head(engine.bases.loaded["tiny-llama"].model)
    assert split is not None
    torch.manual_seed(0)
    rows, width = 300, split.layer.weight.shape[1]  # three chunks of CHUNK_ROWS
    states = torch.randn(rows, width)
    targets = torch.randint(0, split.layer.weight.shape[0], (rows,))
    weights = torch.zeros(rows)
    weights[torch.randperm(rows)[:40]] = torch.rand(40) + 0.5
    weights[200] = 1.0  # alone in its chunk among the weighted rows
    exact = gradient_positions("cross_entropy", {"weights": weights})
    assert exact is not None and int(exact.sum()) < rows

    def gradient(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = states.clone().requires_grad_(True)
        out = head.target_logprobs(split, x, targets, None, mask)
        (-(weights * out).sum()).backward()  # type: ignore[no-untyped-call]
        assert x.grad is not None
        return out.detach(), x.grad

    given = exact if hint == "exact" else exact & (torch.arange(rows) % 3 != 0)
    want_out, want_grad = gradient(None)
    got_out, got_grad = gradient(given)
    assert torch.equal(got_out, want_out)
    if packed.available():  # row-independent products: the same bits
        assert torch.equal(got_grad, want_grad)
    else:
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(got_grad[~exact], torch.zeros_like(got_grad[~exact]))


def test_gradient_positions_follow_the_losses_gates() -> None:
    adv = torch.tensor([0.0, 1.0, -2.0, 0.0])
    for loss in ("importance_sampling", "ppo", "cispo", "gspo"):
        got = gradient_positions(loss, {"advantages": adv})
        assert got is not None and got.tolist() == [False, True, True, False]
    assert gradient_positions("dro", {"advantages": adv}) is None  # its penalty has a gradient everywhere
    assert gradient_positions("cross_entropy", {}) is None  # no weights: all ones
    soft = torch.tensor([[0.0, 0.0], [0.0, 0.5]])
    got = gradient_positions("cross_entropy", {"weights": soft})
    assert got is not None and got.tolist() == [False, True]
