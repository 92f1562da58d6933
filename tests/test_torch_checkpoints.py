"""Checkpoints of the torch backend: resume, standard peft adapter folders, merged export.

Tolerances: a resumed run must replay the uninterrupted one bit for bit (CPU float32 is
deterministic); a saved adapter loaded by plain ``peft.PeftModel.from_pretrained`` and a merged
export loaded by ``AutoModelForCausalLM`` must reproduce the backend's logprobs within ``1e-5``
(the peft load is the same computation; merging changes float32 rounding only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinker_std.backends.torch import TorchEngine, builtin_path
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput, ParsedCheckpointTinkerPath

from _support import sample_one

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "tiny-llama"
ADAM = AdamParams(learning_rate=1e-2, weight_decay=0.01)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "tinker-std-cache"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> CheckpointStore:
    return CheckpointStore(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def engine(cache_dir: Path, store: CheckpointStore) -> Iterator[TorchEngine]:
    eng = TorchEngine(store, device="cpu", cache_dir=cache_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def data(engine: TorchEngine) -> list[Datum]:
    tok = engine.tokenizer(MODEL)
    texts = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hello, world!"]
    return [datum(tok.encode(t)) for t in texts]


def datum(tokens: Sequence[int]) -> Datum:
    inputs = {"target_tokens": list(tokens[1:])}
    return Datum(model_input=ModelInput.from_ints(list(tokens[:-1])), loss_fn_inputs=inputs)


def path(name: str, kind: str = "weights", run: str = "run-1") -> ParsedCheckpointTinkerPath:
    return ParsedCheckpointTinkerPath.from_tinker_path(f"tinker://{run}/{kind}/{name}")


def logprobs(engine: TorchEngine, model_id: str, data: list[Datum]) -> list[np.ndarray]:
    out = engine.forward_backward(model_id, data, "cross_entropy", {}, False)
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def train(engine: TorchEngine, model_id: str, data: list[Datum], steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        losses.append(engine.forward_backward(model_id, data, "cross_entropy", {}, True).metrics["loss:sum"])
        engine.optim_step(model_id, ADAM)
    return losses


def trained(engine: TorchEngine, data: list[Datum], rank: int = 4, steps: int = 2, **lora: Any) -> str:
    model_id = engine.create_model(MODEL, LoraConfig(rank=rank, seed=0, **lora)).model_id
    train(engine, model_id, data, steps)
    return model_id


def test_resume_with_optimizer_reproduces_the_uninterrupted_run(engine: TorchEngine, data: list[Datum]) -> None:
    model_id = trained(engine, data, steps=2)
    engine.save_state(model_id, path("resume"), overwrite=False)
    continued = train(engine, model_id, data, 3)
    resumed_id = engine.load_model(path("resume"), with_optimizer=True).model_id
    resumed = train(engine, resumed_id, data, 3)
    assert resumed == continued
    a, b = engine.read_state(resumed_id), engine.read_state(model_id)
    assert a.step == b.step == 5
    for field in ("weights", "exp_avg", "exp_avg_sq"):
        for name, value in getattr(b, field).items():
            np.testing.assert_array_equal(getattr(a, field)[name], value, err_msg=f"{field} {name}")
    for x, y in zip(logprobs(engine, resumed_id, data), logprobs(engine, model_id, data), strict=True):
        np.testing.assert_array_equal(x, y)


def test_loading_without_optimizer_restores_weights_only(engine: TorchEngine, data: list[Datum]) -> None:
    model_id = trained(engine, data, rank=8, train_mlp=False)
    saved = logprobs(engine, model_id, data)
    engine.save_state(model_id, path("no-opt"), overwrite=False)
    engine.save_weights_for_sampler(model_id, path("no-opt", "sampler_weights"), overwrite=False)
    for source in (path("no-opt"), path("no-opt", "sampler_weights")):
        spec = engine.load_model(source, with_optimizer=False)
        assert spec.lora == LoraConfig(rank=8, seed=0, train_mlp=False) and spec.base_model == MODEL
        state = engine.read_state(spec.model_id)
        assert state.step == 0 and all(np.all(m == 0) for m in state.exp_avg.values())
        for x, y in zip(logprobs(engine, spec.model_id, data), saved, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(BadRequestError) as info:
        engine.load_model(path("no-opt", "sampler_weights"), with_optimizer=True)
    assert info.value.field == "path"


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
def test_checkpoint_files_are_a_standard_peft_adapter(
    engine: TorchEngine, data: list[Datum], store: CheckpointStore, cache_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_id = trained(engine, data, rank=4)
    ours = logprobs(engine, model_id, data)
    engine.save_weights_for_sampler(model_id, path("peft", "sampler_weights"), overwrite=False)
    engine.save_state(model_id, path("peft"), overwrite=False)
    for source in (path("peft", "sampler_weights"), path("peft")):
        folder = store.directory(source)
        names = {p.name for p in folder.iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "checkpoint.json"} <= names
        assert ("optimizer.safetensors" in names) == (source.checkpoint_type == "training")
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 32 and config["lora_dropout"] == 0.0
        assert sorted(config["target_modules"]) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        )
        base = AutoModelForCausalLM.from_pretrained(builtin_path(MODEL, cache_dir), dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
        for d, lp in zip(data, ours, strict=True):
            with torch.no_grad():
                logits = peft_model(torch.tensor([d.model_input.to_ints()])).logits[0]
            targets = d.loss_fn_inputs["target_tokens"].to_torch()
            want = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).numpy()
            diff = float(np.abs(lp - want).max())
            assert diff <= 1e-5, f"peft.PeftModel.from_pretrained vs backend: max |diff| {diff:.2e}"


def test_merged_export_loads_as_a_plain_transformers_model(
    engine: TorchEngine, data: list[Datum], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = trained(engine, data, rank=4)
    ours = logprobs(engine, model_id, data)
    out = engine.export_merged(model_id, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.encode("Hello, world!") == engine.tokenizer(MODEL).encode("Hello, world!")
    worst = 0.0
    for d, lp in zip(data, ours, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([d.model_input.to_ints()])).logits[0]
        targets = d.loss_fn_inputs["target_tokens"].to_torch()
        want = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).numpy()
        worst = max(worst, float(np.abs(lp - want).max()))
    assert worst <= 1e-4, f"merged export vs backend: max |diff| {worst:.2e}"
    with pytest.raises(ConflictError):
        engine.export_merged(model_id, out)


def test_save_conflicts_and_load_errors(engine: TorchEngine, data: list[Datum], store: CheckpointStore) -> None:
    model_id = trained(engine, data, steps=1)
    engine.save_state(model_id, path("dup"), overwrite=False)
    before = (store.directory(path("dup")) / "adapter_model.safetensors").read_bytes()
    train(engine, model_id, data, 1)
    with pytest.raises(ConflictError):
        engine.save_state(model_id, path("dup"), overwrite=False)
    assert (store.directory(path("dup")) / "adapter_model.safetensors").read_bytes() == before
    engine.save_state(model_id, path("dup"), overwrite=True)
    assert (store.directory(path("dup")) / "adapter_model.safetensors").read_bytes() != before
    with pytest.raises(BadRequestError):
        engine.save_state(model_id, path("dup", "sampler_weights"), overwrite=False)
    with pytest.raises(NotFoundError):
        engine.load_model(path("missing"), with_optimizer=False)
    with pytest.raises(NotFoundError):
        engine.create_sampler(model_path=path("missing"))
    # a checkpoint of another backend
    with store.writing(path("mock-ckpt"), False, {"backend": "mock", "base_model": "mock/tiny", "lora": {"rank": 4}}):
        pass
    with pytest.raises(BadRequestError) as info:
        engine.load_model(path("mock-ckpt"), with_optimizer=False)
    assert info.value.field == "path"
    assert not list((store.root / ".tmp").glob("*/*")), "staging folders must not be left behind"


def test_sampler_from_checkpoint_and_snapshot_serve_fixed_weights(engine: TorchEngine, data: list[Datum]) -> None:
    from tinker_std.backend import SampleRequest
    from tinker_std.types import SamplingParams

    model_id = trained(engine, data)
    engine.save_weights_for_sampler(model_id, path("serve", "sampler_weights"), overwrite=False)
    prompt = [*data[0].model_input.to_ints(), data[0].loss_fn_inputs["target_tokens"].to_numpy().tolist()[-1]]
    request = SampleRequest(
        prompt=prompt, num_samples=1, sampling_params=SamplingParams(max_tokens=1), include_prompt_logprobs=True
    )

    def scores(sampler_id: str) -> np.ndarray:
        lps = sample_one(engine, sampler_id, request).prompt_logprobs
        assert lps is not None
        return np.array(lps[1:], dtype=np.float64)

    from_file = engine.create_sampler(model_path=path("serve", "sampler_weights")).sampler_id
    snapshot = engine.create_sampler(model_id=model_id).sampler_id
    first_file, first_snap = scores(from_file), scores(snapshot)
    np.testing.assert_array_equal(first_file, first_snap)
    np.testing.assert_allclose(first_snap, logprobs(engine, model_id, data[:1])[0], rtol=0, atol=1e-4)
    train(engine, model_id, data, 2)
    np.testing.assert_array_equal(scores(snapshot), first_snap)
    np.testing.assert_array_equal(scores(from_file), first_file)
    assert not np.allclose(scores(engine.create_sampler(model_id=model_id).sampler_id), first_snap)
