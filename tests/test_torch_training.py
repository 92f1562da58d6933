"""The torch backend's training path, driven through ``TorchEngine`` (no client layer).

Real numbers on the built-in ``tiny-llama`` (float32, CPU). Tolerances:

* the same maths along two paths (peft LoRA forward vs a hand-merged plain ``transformers``
  forward, a batch vs each datum alone, micro-batched vs whole): ``atol 1e-4`` per logprob, the
  spec's ``fp32`` class; measured differences are far smaller (see the asserts' messages);
* gradient accumulation (A then B vs A + B): ``atol 1e-6``;
* what must be a replay (fresh LoRA vs base, isolation, AdamW vs ``torch.optim.AdamW`` on the same
  float32 tensors): exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backend import AdapterState
from tinker_std.backends.torch import LORA_ALPHA, TorchEngine, builtin_path
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, ContextLengthError, NotFoundError
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "tiny-llama"
ADAM = AdamParams(learning_rate=1e-2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "tinker-std-cache"


@pytest.fixture(scope="module")
def engine(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    eng = TorchEngine(CheckpointStore(tmp_path_factory.mktemp("ckpt")), device="cpu", cache_dir=cache_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def texts(engine: TorchEngine) -> list[list[int]]:
    tok = engine.tokenizer(MODEL)
    return [
        tok.encode("The quick brown fox jumps over the lazy dog."),
        tok.encode("Paris is the capital of France."),
        tok.encode("def add(a, b):\n    return a + b\n"),
        tok.encode("Hello, world!"),
    ]


def datum(tokens: Sequence[int], weights: Sequence[float] | None = None) -> Datum:
    inputs: dict[str, Any] = {"target_tokens": list(tokens[1:])}
    if weights is not None:
        inputs["weights"] = list(weights)
    return Datum(model_input=ModelInput.from_ints(list(tokens[:-1])), loss_fn_inputs=inputs)


def logprobs(engine: TorchEngine, model_id: str, data: list[Datum]) -> list[np.ndarray]:
    out = engine.forward_backward(model_id, data, "cross_entropy", {}, False)
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def new_model(engine: TorchEngine, seed: int = 0, **lora: Any) -> str:
    return engine.create_model(MODEL, LoraConfig(rank=lora.pop("rank", 4), seed=seed, **lora)).model_id


def trained(engine: TorchEngine, texts: list[list[int]], steps: int = 3, seed: int = 0, **lora: Any) -> str:
    model_id = new_model(engine, seed, **lora)
    for _ in range(steps):
        engine.forward_backward(model_id, [datum(t) for t in texts[:2]], "cross_entropy", {}, True)
        engine.optim_step(model_id, ADAM)
    return model_id


def plain_model(cache_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(builtin_path(MODEL, cache_dir), dtype=torch.float32)
    return model.eval()


def merge_by_hand(model: Any, state: AdapterState, rank: int) -> None:
    """W += (alpha / rank) * B @ A for every adapted module (computed in float64)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, lora_a in state.weights.items():
            if not name.endswith(".lora_A"):
                continue
            module = name[: -len(".lora_A")]
            lora_b = state.weights[f"{module}.lora_B"]
            delta = (LORA_ALPHA / rank) * torch.from_numpy(lora_b) @ torch.from_numpy(lora_a)
            weight = modules[module].weight
            weight.copy_((weight.double() + delta).float())


def hf_logprobs(model: Any, tokens: Sequence[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([list(tokens[:-1])])).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    return lp.gather(-1, torch.tensor(tokens[1:]).unsqueeze(-1)).squeeze(-1).numpy()


# -- forward ---------------------------------------------------------------------------------


def test_forward_matches_a_hand_merged_plain_transformers_forward(
    engine: TorchEngine, texts: list[list[int]], cache_dir: Path
) -> None:
    model_id = trained(engine, texts, steps=3, rank=4)
    state = engine.read_state(model_id)
    assert any(np.abs(w).max() > 0 for n, w in state.weights.items() if n.endswith("lora_B")), "B must have moved"
    reference = plain_model(cache_dir)
    merge_by_hand(reference, state, rank=4)
    got = logprobs(engine, model_id, [datum(t) for t in texts])
    for tokens, lp in zip(texts, got, strict=True):
        want = hf_logprobs(reference, tokens)
        diff = float(np.abs(lp - want).max())
        assert diff <= 1e-4, f"LoRA forward vs merged plain forward: max |diff| {diff:.2e}"


def test_a_fresh_adapter_is_exactly_the_base_model(
    engine: TorchEngine, texts: list[list[int]], cache_dir: Path
) -> None:
    base = plain_model(cache_dir)
    for lora in ({"rank": 4}, {"rank": 8, "train_mlp": False}, {"rank": 2, "train_attn": False}):
        model_id = new_model(engine, seed=11, **lora)
        for tokens in texts:
            (lp,) = logprobs(engine, model_id, [datum(tokens)])
            np.testing.assert_array_equal(lp, hf_logprobs(base, tokens))
        state = engine.read_state(model_id)
        assert all(np.all(w == 0) for n, w in state.weights.items() if n.endswith("lora_B"))


def test_adapter_structure_and_initialisation(engine: TorchEngine) -> None:
    state = engine.read_state(new_model(engine, seed=3, rank=8))
    modules = {n.rsplit(".", 1)[0].rsplit(".", 1)[-1] for n in state.weights}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    assert len(state.weights) == 2 * (7 * 2 + 1)  # 2 layers x 7 linears + lm_head, A and B each
    a = state.weights["model.layers.0.mlp.down_proj.lora_A"]
    assert a.shape == (8, 128) and np.abs(a).max() <= 1 / np.sqrt(128) and np.abs(a).max() > 0.5 / np.sqrt(128)
    assert state.weights["lm_head.lora_B"].shape == (engine.tokenizer(MODEL).vocab_size, 8)
    same = engine.read_state(new_model(engine, seed=3, rank=8))
    other = engine.read_state(new_model(engine, seed=4, rank=8))
    for name, value in state.weights.items():
        np.testing.assert_array_equal(value, same.weights[name])
    assert not np.array_equal(state.weights["lm_head.lora_A"], other.weights["lm_head.lora_A"])
    attn_only = engine.read_state(new_model(engine, train_mlp=False, train_unembed=False))
    assert {n.split(".")[-2] for n in attn_only.weights} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_a_datum_in_a_batch_matches_it_alone(engine: TorchEngine, texts: list[list[int]]) -> None:
    model_id = trained(engine, texts, steps=2)
    data = [datum(t) for t in texts]
    batched = logprobs(engine, model_id, data)
    worst = 0.0
    for d, lp in zip(data, batched, strict=True):
        (alone,) = logprobs(engine, model_id, [d])
        worst = max(worst, float(np.abs(alone - lp).max()))
    assert worst <= 1e-4, f"batched vs alone: max |diff| {worst:.2e}"


def test_micro_batches_give_the_whole_batch_result(
    engine: TorchEngine, texts: list[list[int]], cache_dir: Path, tmp_path: Path
) -> None:
    small = TorchEngine(CheckpointStore(tmp_path), device="cpu", cache_dir=cache_dir, max_batch_tokens=16)
    total = sum(len(t) - 1 for t in texts)
    data = [datum(t, [1.0 / total] * (len(t) - 1)) for t in texts]
    results = []
    for eng in (engine, small):
        model_id = new_model(eng, seed=5)
        eng.forward_backward(model_id, data[:1], "cross_entropy", {}, True)
        eng.optim_step(model_id, ADAM)
        out = eng.forward_backward(model_id, data, "cross_entropy", {}, True)
        results.append((out, eng.read_state(model_id)))
    (whole, whole_state), (micro, micro_state) = results
    assert len(small.passes.micro_batches(data, 384)) > 1
    for a, b in zip(whole.loss_fn_outputs, micro.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(a["logprobs"].to_numpy(), b["logprobs"].to_numpy(), rtol=0, atol=1e-4)
    assert abs(whole.metrics["loss:sum"] - micro.metrics["loss:sum"]) <= 1e-4 * abs(whole.metrics["loss:sum"])
    for name, g in whole_state.grads.items():
        np.testing.assert_allclose(micro_state.grads[name], g, rtol=0, atol=1e-6)


def test_soft_targets_score_every_column(engine: TorchEngine, texts: list[list[int]]) -> None:
    model_id = trained(engine, texts, steps=1)
    tokens = texts[1]
    n = len(tokens) - 1
    cols = np.stack([np.array(tokens[1:]), np.array(tokens[:-1]), np.arange(n) % 7], axis=1)
    soft = Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": cols.tolist(), "weights": np.full((n, 3), 0.25, np.float32)},
    )
    out = engine.forward_backward(model_id, [soft], "cross_entropy", {}, False)
    lp = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    assert lp.shape == (n, 3)
    for k in range(3):
        hard = datum([tokens[0], *cols[:, k].tolist()])
        hard = Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=hard.loss_fn_inputs)
        (column,) = logprobs(engine, model_id, [hard])
        np.testing.assert_array_equal(lp[:, k], column)
    assert out.metrics["loss:sum"] == pytest.approx(-0.25 * float(lp.astype(np.float64).sum()), rel=1e-5)


def test_forward_is_a_pure_bit_exact_replay(engine: TorchEngine, texts: list[list[int]]) -> None:
    model_id = trained(engine, texts, steps=2)
    data = [datum(t) for t in texts]
    engine.forward_backward(model_id, data[:1], "cross_entropy", {}, True)
    before = engine.read_state(model_id)
    out1 = logprobs(engine, model_id, data)
    out2 = logprobs(engine, model_id, data)
    fb = engine.forward_backward(model_id, data, "cross_entropy", {}, True)
    for a, b, c in zip(out1, out2, fb.loss_fn_outputs, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c["logprobs"].to_numpy())
    after = engine.read_state(model_id)
    for name in before.weights:
        np.testing.assert_array_equal(before.weights[name], after.weights[name])


# -- gradients and the optimizer ---------------------------------------------------------------


def test_gradients_accumulate_by_summation(engine: TorchEngine, texts: list[list[int]]) -> None:
    total = sum(len(t) - 1 for t in texts)

    def mean_datum(tokens: list[int]) -> Datum:  # per-token mean over the whole set keeps grads O(1)
        return datum(tokens, [1.0 / total] * (len(tokens) - 1))

    a = [mean_datum(texts[0]), mean_datum(texts[1])]
    b = [mean_datum(texts[2]), mean_datum(texts[3])]
    split, whole = trained(engine, texts, steps=1, seed=9), trained(engine, texts, steps=1, seed=9)
    engine.forward_backward(split, a, "cross_entropy", {}, True)
    engine.forward_backward(split, b, "cross_entropy", {}, True)
    engine.forward_backward(whole, a + b, "cross_entropy", {}, True)
    gs, gw = engine.read_state(split).grads, engine.read_state(whole).grads
    worst = max(float(np.abs(gs[n] - gw[n]).max()) for n in gw)
    scale = max(float(np.abs(g).max()) for g in gw.values())
    assert worst <= 1e-6, f"A then B vs A + B: max |grad diff| {worst:.2e} (largest |grad| {scale:.2e})"
    assert scale > 1e-2
    engine.optim_step(split, ADAM)
    engine.optim_step(whole, ADAM)
    ws, ww = engine.read_state(split).weights, engine.read_state(whole).weights
    for name in ww:
        np.testing.assert_allclose(ws[name], ww[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        AdamParams(learning_rate=1e-2),
        AdamParams(learning_rate=3e-3, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.1),
        AdamParams(learning_rate=1e-2, grad_clip_norm=0.5),
    ],
)
def test_optim_step_is_torch_adamw(engine: TorchEngine, texts: list[list[int]], params: AdamParams) -> None:
    model_id = new_model(engine, seed=2)
    data = [datum(t) for t in texts[:3]]
    names: list[str] = []
    reference: list[torch.nn.Parameter] = []
    optimizer: torch.optim.AdamW | None = None
    for step in range(3):
        engine.forward_backward(model_id, data, "cross_entropy", {}, True)
        state = engine.read_state(model_id)
        if optimizer is None:
            names = list(state.weights)
            reference = [torch.nn.Parameter(torch.from_numpy(state.weights[n]).float()) for n in names]
            optimizer = torch.optim.AdamW(
                reference,
                lr=params.learning_rate,
                betas=(params.beta1, params.beta2),
                eps=params.eps,
                weight_decay=params.weight_decay,
                foreach=False,
            )
        for p, n in zip(reference, names, strict=True):
            p.grad = torch.from_numpy(state.grads[n]).float()
        norm = float(torch.nn.utils.clip_grad_norm_(reference, params.grad_clip_norm or float("inf"), foreach=False))
        optimizer.step()
        metrics = engine.optim_step(model_id, params).metrics or {}
        assert metrics["step:max"] == step + 1
        assert metrics["grad_norm:max"] == pytest.approx(norm, rel=1e-5)
        after = engine.read_state(model_id)
        for p, n in zip(reference, names, strict=True):
            np.testing.assert_allclose(after.weights[n], p.detach().numpy(), rtol=0, atol=1e-7)
            np.testing.assert_allclose(after.exp_avg[n], optimizer.state[p]["exp_avg"].numpy(), rtol=0, atol=1e-7)
            np.testing.assert_allclose(
                after.exp_avg_sq[n], optimizer.state[p]["exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-9
            )
            assert np.all(after.grads[n] == 0)
        assert after.step == step + 1


def test_training_one_client_leaves_another_bit_identical(engine: TorchEngine, texts: list[list[int]]) -> None:
    data = [datum(t) for t in texts]
    other = trained(engine, texts, steps=1, seed=1)
    engine.forward_backward(other, data[:2], "cross_entropy", {}, True)  # a pending gradient
    before_lp, before = logprobs(engine, other, data), engine.read_state(other)
    busy = new_model(engine, seed=1)
    for _ in range(3):
        engine.forward_backward(busy, data, "cross_entropy", {}, True)
        engine.optim_step(busy, AdamParams(learning_rate=5e-2, weight_decay=0.1))
    after_lp, after = logprobs(engine, other, data), engine.read_state(other)
    for a, b in zip(before_lp, after_lp, strict=True):
        np.testing.assert_array_equal(a, b)
    assert after.step == before.step
    for field in ("weights", "grads", "exp_avg", "exp_avg_sq"):
        for name, value in getattr(before, field).items():
            np.testing.assert_array_equal(getattr(after, field)[name], value, err_msg=f"{field} {name}")
    assert any(np.abs(g).max() > 0 for g in after.grads.values())
    # and the busy client did move
    assert not np.array_equal(logprobs(engine, busy, data[:1])[0], logprobs(engine, other, data[:1])[0])


def test_errors(engine: TorchEngine, texts: list[list[int]]) -> None:
    model_id = new_model(engine)
    with pytest.raises(ContextLengthError):
        engine.forward_backward(model_id, [datum([5] * 258)], "cross_entropy", {}, False)
    with pytest.raises(NotFoundError):
        engine.forward_backward("torch-nope", [datum(texts[0])], "cross_entropy", {}, False)
    with pytest.raises(NotFoundError) as info:
        engine.create_model("no-such/model-anywhere", LoraConfig(rank=4))
    assert "local path" in str(info.value) and "tiny-llama" in str(info.value)
    with pytest.raises(BadRequestError):
        engine.create_sampler(base_model=MODEL, model_id=model_id)
    engine.release_model(model_id)
    engine.release_model(model_id)
    with pytest.raises(NotFoundError):
        engine.read_state(model_id)
