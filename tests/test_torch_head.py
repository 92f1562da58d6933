"""The training pass's fused paths equal the plain ones (issue 14, the training step):

* ``head.py``: target logprobs from hidden states in row chunks, never the full-vocabulary logits,
  vs the model's own logits + ``log_softmax`` + ``gather`` (``TorchSettings.fused_head`` off);
* ``lora_linear.py``: the trained adapter's LoRA layers as single fused products vs peft's
  forward (``TorchSettings.fused_lora`` off).

Tolerance: the ``fp32`` class. Logprobs and losses ``atol 1e-4``; LoRA gradients ``rtol 1e-4``
with ``atol`` 1e-5 of the tensor's largest entry (the same sums, accumulated in another order).
Measured differences are about 1e-6 relative. Every built-in loss that consumes logprobs is run,
with hard ``(N,)`` and soft ``(N, K)`` targets, with and without a LoRA on ``lm_head``
(``train_unembed``), on ``tiny-llama`` and ``tiny-qwen3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backends.torch import TorchEngine, adapters
from tinker_std.backends.torch.fast import head, lora_linear, packed
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput

from _support import LOSS_CONFIGS as LOSSES
from _support import engine_pass

MODELS = ("tiny-llama", "tiny-qwen3")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    cache = tmp_path_factory.getbasetemp() / "tinker-std-cache"
    # batching="serial": the only mode in which the engine uses fused LoRA layers
    eng = TorchEngine(
        CheckpointStore(tmp_path_factory.mktemp("ckpt")), device="cpu", cache_dir=cache, batching="serial"
    )
    yield eng
    eng.close()


def batch(engine: TorchEngine, model: str, loss: str, soft: bool) -> list[Datum]:
    tok = engine.tokenizer(model)
    rows = [tok.encode(t) for t in ("The quick brown fox jumps over the lazy dog.", "Hello, world!", "a")]
    rows[-1] = rows[-1] + rows[-1]  # a two-token datum: one training position
    rng = np.random.default_rng(7)
    data = []
    for row in rows:
        n = len(row) - 1
        targets: Any = row[1:]
        if soft:
            targets = [[t, (t * 7 + 3) % 200, 5] for t in row[1:]]
        inputs: dict[str, Any] = {"target_tokens": targets}
        shape = (n, 3) if soft else (n,)
        if loss == "cross_entropy":
            inputs["weights"] = rng.uniform(0.1, 1.0, shape).tolist()
        else:
            inputs["logprobs"] = rng.uniform(-9.0, -4.0, shape).tolist()
            inputs["advantages"] = rng.normal(size=shape).tolist()
        data.append(Datum(model_input=ModelInput.from_ints(row[:-1]), loss_fn_inputs=inputs))
    return data


def run(
    engine: TorchEngine, model_id: str, data: list[Datum], loss: str, fused: bool
) -> tuple[list[np.ndarray], float, dict[str, np.ndarray]]:
    return engine_pass(engine, model_id, data, loss, {"fused_head": fused, "fused_lora": fused})


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("unembed", [False, True])
def test_fused_training_pass_equals_the_plain_one(engine: TorchEngine, model: str, unembed: bool) -> None:
    model_id = engine.create_model(model, LoraConfig(rank=4, seed=3, train_unembed=unembed)).model_id
    for _ in range(2):  # non-zero lora_B, so every LoRA factor gets a gradient
        engine.forward_backward(model_id, batch(engine, model, "cross_entropy", False), "cross_entropy", {}, True)
        engine.optim_step(model_id, AdamParams(learning_rate=1e-2))
    base = engine.bases.loaded[model].model
    assert head.output_head(base) is not None, "the fused head path does not apply to this model"
    training = engine.training.models[model_id]
    adapters.activate(base, training.adapter, trainable=True)
    with lora_linear.fused_lora_linears(base, training.adapter, packing=True) as switched:
        assert switched == 7 * base.config.num_hidden_layers + unembed
    for loss in LOSSES:
        for soft in (False, True):
            data = batch(engine, model, loss, soft)
            lp_fused, loss_fused, grads_fused = run(engine, model_id, data, loss, True)
            lp_plain, loss_plain, grads_plain = run(engine, model_id, data, loss, False)
            where = f"{model} unembed={unembed} {loss} soft={soft}"
            assert abs(loss_fused - loss_plain) <= 1e-4 * max(1.0, abs(loss_plain)), where
            for f, p in zip(lp_fused, lp_plain, strict=True):
                assert f.shape == p.shape
                np.testing.assert_allclose(f, p, atol=1e-4, rtol=0, err_msg=where)
            assert any("lm_head" in name for name in grads_plain) == unembed
            for name, g in grads_plain.items():
                assert np.abs(g).max() > 0, f"{where} {name}"
                scale = float(np.abs(g).max())
                np.testing.assert_allclose(
                    grads_fused[name], g, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{where} {name}"
                )


def plain_target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) if targets.dim() == 1 else logp.gather(-1, targets)


@pytest.mark.parametrize("lora_trained", [None, False, True])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("packing", [True, False])
def test_chunked_head_gradients_equal_autograd_on_full_logits(
    lora_trained: bool | None, soft: bool, packing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows than one chunk; a frozen head (backward from ``E = P @ W``), a head LoRA that is
    frozen (``E`` for its factor too) or trained (the recomputing backward)."""
    monkeypatch.setattr(head, "CHUNK_ROWS", 16)
    gen = torch.Generator().manual_seed(11)
    n, hidden_size, vocab, rank = 40, 32, 300, 4
    layer = torch.nn.Linear(hidden_size, vocab, bias=False).requires_grad_(False)
    decoder = torch.nn.Identity()
    split = head.OutputHead(decoder=decoder, layer=layer, module=layer, packing=packing)
    h = torch.randn(n, hidden_size, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (n, 3) if soft else (n,), generator=gen)
    upstream = torch.randn(targets.shape, generator=gen)
    lora = None
    lora_a = torch.nn.Linear(hidden_size, rank, bias=False)
    lora_b = torch.randn(vocab, rank, generator=gen) * 0.1
    if lora_trained is not None:
        lora_a.requires_grad_(True)
        lora_b.requires_grad_(lora_trained)
        lora = head.HeadLora(lora_a, lora_b, 2.0)

    fused = head.target_logprobs(split, h, targets, lora)
    (fused * upstream).sum().backward()  # type: ignore[no-untyped-call]
    got = [h.grad.clone()] + ([] if lora is None else [lora_a.weight.grad.clone()])  # type: ignore[union-attr]
    if lora_trained:
        got.append(lora_b.grad.clone())  # type: ignore[union-attr]
    h.grad = None
    lora_a.weight.grad = None
    lora_b.grad = None

    logits = layer(h)
    if lora is not None:
        logits = logits + lora_b_linear(lora_a(h), lora_b) * 2.0
    plain = plain_target_logprobs(logits, targets)
    (plain * upstream).sum().backward()  # type: ignore[no-untyped-call]
    want = [h.grad] + ([] if lora is None else [lora_a.weight.grad])
    if lora_trained:
        want.append(lora_b.grad)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))  # type: ignore[union-attr]


def lora_b_linear(low: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(low, factor)


def test_fused_lora_linear_equals_peft() -> None:
    import peft

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=False), torch.nn.Linear(40, 16, bias=False))
    model = peft.get_peft_model(
        net, peft.LoraConfig(r=4, lora_alpha=32, target_modules=["0", "1"], init_lora_weights=False)
    )
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    x = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))

    def grads(fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for p in params.values():
            p.grad = None
        with lora_linear.fused_lora_linears(model, "default" if fused else None, packing=True) as switched:
            assert switched == (2 if fused else 0)
            y = model(x)
            (y * upstream).sum().backward()  # type: ignore[no-untyped-call]
        return y.detach(), {n: p.grad.clone() for n, p in params.items()}  # type: ignore[union-attr]

    y_fused, g_fused = grads(True)
    y_plain, g_plain = grads(False)
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-5, atol=1e-6)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_fused[name], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()))


def test_a_rows_logprobs_and_gradient_do_not_depend_on_the_other_rows() -> None:
    """With packed products (row-independent by their probe) a row's results are bit-equal
    alone and inside a larger batch: the conformance suite's replays rely on it."""
    layer = torch.nn.Linear(32, 300, bias=False).requires_grad_(False)
    split = head.OutputHead(decoder=torch.nn.Identity(), layer=layer, module=layer)
    if packed.frozen_products(layer) is None:
        pytest.skip("oneDNN packing unavailable or refused on this CPU")
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(40, 32, generator=gen)
    targets = torch.randint(0, 300, (40,), generator=gen)
    upstream = torch.randn(40, generator=gen)

    def run(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x = h[rows].clone().requires_grad_(True)
        out = head.target_logprobs(split, x, targets[rows])
        (out * upstream[rows]).sum().backward()  # type: ignore[no-untyped-call]
        return out.detach(), x.grad  # type: ignore[return-value]

    whole, whole_grad = run(slice(0, 40))
    for rows in (slice(0, 5), slice(7, 19), slice(33, 40)):
        part, part_grad = run(rows)
        assert torch.equal(part, whole[rows])
        assert torch.equal(part_grad, whole_grad[rows])
