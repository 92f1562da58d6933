"""Idle training models offloaded to files (``offload.py``, ``TorchEngine(resident_models=...)``)
compute exactly what models kept in memory compute: the same session of several interleaved
clients (steps, accumulation, reads, a checkpoint, a sampler snapshot) on an engine that keeps one
model resident and on one that keeps all, compared bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backend import SampleRequest
from tinker_std.backends.torch import TorchEngine, offload
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput, ParsedCheckpointTinkerPath, SamplingParams

from _support import sample_one

MODEL = "tiny-llama"
ADAM = AdamParams(learning_rate=1e-2)


def batch(engine: TorchEngine, i: int) -> list[Datum]:
    tok = engine.tokenizer(MODEL)
    texts = ["The quick brown fox jumps.", f"Client {i} says hello.", "def f(x):\n    return x"]
    rows = [tok.encode(t) for t in texts[i % 2 :]]
    return [
        Datum(model_input=ModelInput.from_ints(r[:-1]), loss_fn_inputs={"target_tokens": r[1:]})  # type: ignore[dict-item]
        for r in rows
    ]


def session(engine: TorchEngine, root: Path) -> list[Any]:
    """Three clients, interleaved; returns every observable result."""
    seen: list[Any] = []
    ids = [engine.create_model(MODEL, LoraConfig(rank=4, seed=s)).model_id for s in range(3)]
    for step in range(3):
        for i, model_id in enumerate(ids):
            out = engine.forward_backward(model_id, batch(engine, i + step), "cross_entropy", {}, True)
            if i == 1:  # accumulation across a call of another client
                engine.forward_backward(ids[0], batch(engine, 5), "cross_entropy", {}, False)
                out = engine.forward_backward(model_id, batch(engine, i), "cross_entropy", {}, True)
            seen.append([o["logprobs"].to_numpy() for o in out.loss_fn_outputs])
            seen.append(engine.optim_step(model_id, ADAM).metrics)
    for model_id in ids:
        state = engine.read_state(model_id)
        seen.append((state.weights, state.exp_avg, state.exp_avg_sq, state.step))
    path = ParsedCheckpointTinkerPath.from_tinker_path(f"tinker://run-{root.name}/weights/w0")
    engine.save_state(ids[0], path, overwrite=True)
    engine.optim_step(ids[1], ADAM)  # pushes ids[0] out again
    loaded = engine.load_model(path, with_optimizer=True).model_id
    out = engine.forward_backward(loaded, batch(engine, 0), "cross_entropy", {}, True)
    seen.append([o["logprobs"].to_numpy() for o in out.loss_fn_outputs])
    seen.append(engine.optim_step(loaded, ADAM).metrics)
    sampler = engine.create_sampler(model_id=ids[2])
    request = SampleRequest(
        prompt=batch(engine, 0)[0].model_input.to_ints(),
        num_samples=2,
        sampling_params=SamplingParams(max_tokens=6, temperature=1.0, seed=4),
    )
    seen.append([s.tokens for s in sample_one(engine, sampler.sampler_id, request).sequences])
    return seen


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_offloaded_models_compute_bit_for_bit_what_resident_ones_do(tmp_path: Path) -> None:
    results = []
    offloads = []
    for resident in (None, 1):
        root = tmp_path / f"resident-{resident}"
        engine = TorchEngine(CheckpointStore(root), device="cpu", resident_models=resident)
        calls = []
        original = engine.training.idle.offload

        def counting(key: str, *args: Any, original: Any = original, calls: list[str] = calls) -> None:
            calls.append(key)
            original(key, *args)

        engine.training.idle.offload = counting  # type: ignore[method-assign]
        results.append(session(engine, root))
        offloads.append(len(calls))
        engine.close()
        assert not (root / ".offload").exists() or not any((root / ".offload").rglob("*.bin"))
    assert offloads[0] == 0 and offloads[1] >= 8, offloads
    assert_same(results[0], results[1])


def test_offloaded_state_is_empty_in_memory_and_exact_on_return(tmp_path: Path) -> None:
    engine = TorchEngine(CheckpointStore(tmp_path), device="cpu", resident_models=1)
    a, b = (engine.create_model(MODEL, LoraConfig(rank=4, seed=s)).model_id for s in (1, 2))
    engine.forward_backward(a, batch(engine, 0), "cross_entropy", {}, True)
    engine.optim_step(a, ADAM)
    before = engine.read_state(a)
    engine.forward_backward(b, batch(engine, 1), "cross_entropy", {}, True)
    engine.optim_step(b, ADAM)  # a is now the least recently used idle model
    model = engine.training.models[a]
    assert all(p.numel() == 0 for p in model.params.values())
    assert all(t.numel() == 0 for s in model.optimizer.state.values() for t in s.values())
    files = list((tmp_path / ".offload").rglob("*.bin"))
    assert [f.stem for f in files] == [a]
    after = engine.read_state(a)  # comes back
    assert not files[0].exists()
    assert_same((before.weights, before.exp_avg, before.exp_avg_sq, before.step),
                (after.weights, after.exp_avg, after.exp_avg_sq, after.step))  # fmt: skip
    engine.release_model(b)
    engine.close()


def test_a_model_with_a_pending_gradient_stays_in_memory(tmp_path: Path) -> None:
    engine = TorchEngine(CheckpointStore(tmp_path), device="cpu", resident_models=1)
    a, b = (engine.create_model(MODEL, LoraConfig(rank=4, seed=s)).model_id for s in (1, 2))
    engine.forward_backward(a, batch(engine, 0), "cross_entropy", {}, True)  # gradient pending
    engine.forward_backward(b, batch(engine, 1), "cross_entropy", {}, True)
    engine.optim_step(b, ADAM)
    assert all(p.numel() > 0 for p in engine.training.models[a].params.values())
    engine.close()


def test_round_trip_of_mixed_dtypes(tmp_path: Path) -> None:
    store = offload.IdleStore(tmp_path / "idle")
    params = {
        "w": torch.nn.Parameter(torch.randn(5, 3)),
        "h": torch.nn.Parameter(torch.randn(7).to(torch.bfloat16)),
    }
    optimizer = torch.optim.AdamW(list(params.values()))
    sum(p.float().sum() for p in params.values()).backward()  # type: ignore[union-attr]
    optimizer.step()
    want = {n: p.detach().clone() for n, p in params.items()}
    want_state = {n: {k: v.clone() for k, v in optimizer.state[p].items()} for n, p in params.items()}
    store.offload("m", params, optimizer)
    assert "m" in store
    store.restore("m", params, optimizer)
    for n, p in params.items():
        assert p.dtype == want[n].dtype and torch.equal(p.detach(), want[n])
        for k, v in want_state[n].items():
            assert torch.equal(optimizer.state[p][k], v) and optimizer.state[p][k].shape == v.shape
    store.close()
    assert not (tmp_path / "idle").exists()


@pytest.mark.parametrize("bad", [0, -1])
def test_resident_models_must_be_positive(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError):
        TorchEngine(CheckpointStore(tmp_path), device="cpu", resident_models=bad)
