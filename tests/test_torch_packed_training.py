"""The training forward and backward through oneDNN-packed frozen weights (``packed.py``) equal the
plain ``linear`` path (``TorchSettings.packed_weights`` off) within the ``fp32`` class: logprobs
``atol 1e-4``, LoRA gradients ``rtol 1e-4`` (two GEMM kernels round differently)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tinker_std.backends.torch import TorchEngine
from tinker_std.backends.torch.fast import packed
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchEngine]:
    cache = tmp_path_factory.getbasetemp() / "tinker-std-cache"
    eng = TorchEngine(CheckpointStore(tmp_path_factory.mktemp("ckpt")), device="cpu", cache_dir=cache)
    yield eng
    eng.close()


def data(engine: TorchEngine) -> list[Datum]:
    tok = engine.tokenizer(MODEL)
    rows = [tok.encode(t) for t in ("The quick brown fox jumps over the lazy dog.", "Hello, world!", "a")]
    rows[-1] = rows[-1] + rows[-1]  # a two-token datum: one training position
    return [
        Datum(model_input=ModelInput.from_ints(r[:-1]), loss_fn_inputs={"target_tokens": r[1:]})  # type: ignore[dict-item]
        for r in rows
    ]


def test_packed_training_matches_the_plain_path(engine: TorchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = engine.create_model(MODEL, LoraConfig(rank=4, seed=3)).model_id
    batch = data(engine)
    for _ in range(2):  # non-zero lora_B, so every LoRA factor gets a gradient
        engine.forward_backward(model_id, batch, "cross_entropy", {}, True)
        engine.optim_step(model_id, AdamParams(learning_rate=1e-2))
    fast = engine.forward_backward(model_id, batch, "cross_entropy", {}, True)
    grads_fast = {k: v.copy() for k, v in engine.read_state(model_id).grads.items()}
    base = engine.bases.loaded[MODEL].model
    assert any(packed._ATTRIBUTE + "_t" in m.__dict__ for m in base.modules()), "the backward used no packed weight"

    monkeypatch.setattr(engine, "settings", dataclasses.replace(engine.settings, packed_weights=False))
    plain = engine.forward_backward(model_id, batch, "cross_entropy", {}, True)
    total = engine.read_state(model_id).grads
    for f, p in zip(fast.loss_fn_outputs, plain.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(f["logprobs"].to_numpy(), p["logprobs"].to_numpy(), atol=1e-4, rtol=0)
    assert len(grads_fast) > 0
    for name, g in grads_fast.items():
        assert np.abs(g).max() > 0, name
        np.testing.assert_allclose(total[name] - g, g, rtol=1e-4, atol=1e-6 * float(np.abs(g).max()), err_msg=name)


def test_frozen_packed_linear_gradient_is_the_plain_one() -> None:
    layer = torch.nn.Linear(64, 96).requires_grad_(False)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    weights = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(6))
    (torch.nn.functional.linear(x, layer.weight, layer.bias) * weights).sum().backward()  # type: ignore[no-untyped-call]
    want = x.grad.clone()  # type: ignore[union-attr]
    x.grad = None
    with packed.packed_linears(layer) as count:
        if count == 0:
            pytest.skip("oneDNN packing unavailable or refused on this CPU")
        (layer(x) * weights).sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-5)
