"""``TorchBackend`` as a registered backend: registry, capabilities, options, models, client layer.

Numerics live in ``test_torch_training.py`` / ``test_torch_sampling.py`` /
``test_torch_checkpoints.py``; this file checks the transport and the model plumbing.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.backends.torch import (
    BUILTIN_MODELS,
    TorchBackend,
    TorchBackendBF16,
    TorchBackendFP32,
    TorchEngine,
    builtin_path,
    train_tokenizer,
)
from tinker_std.backends.torch.models import RECIPE_FILE
from tinker_std.checkpoints import CheckpointStore
from tinker_std.registry import load_backend_class

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tinker-std-cache"))


def test_registry_capabilities_and_precision_classes() -> None:
    assert load_backend_class("torch") is TorchBackend
    caps = TorchBackend.capabilities
    assert caps.tolerance == "fp32"
    assert {
        "loss:cispo",
        "loss:dro",
        "loss:gspo",
        "soft_targets",
        "introspection",
        "deterministic",
        "seeded_sampling",
        "topk_prompt_logprobs",
    } <= caps.optional
    cpu = TorchBackend(device="cpu")
    assert type(cpu) is TorchBackend and cpu.engine.dtype == torch.float32
    bf16 = TorchBackend(device="cpu", dtype="bfloat16")
    assert type(bf16) is TorchBackendBF16 and bf16.engine.dtype == torch.bfloat16
    assert TorchBackendBF16.capabilities.tolerance == "bf16"
    assert "deterministic" not in TorchBackendBF16.capabilities.optional | TorchBackendFP32.capabilities.optional
    with pytest.raises(TypeError):
        TorchBackend(no_such_option=1)


def test_tokenizer_and_builtin_cache_are_deterministic_and_atomic(tmp_path: Path) -> None:
    first, second = train_tokenizer(), train_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 300 <= len(first) <= 400 and first.eos_token_id is not None and first.pad_token_id is not None
    text = "Grüße, 世界! 🙂 tabs\tand\nnewlines"
    assert first.decode(first.encode(text)) == text
    folder = builtin_path("tiny-llama", tmp_path)
    assert folder == tmp_path / "models" / "tiny-llama"
    assert {"config.json", "model.safetensors", "tokenizer.json", RECIPE_FILE} <= {p.name for p in folder.iterdir()}
    weights = (folder / "model.safetensors").read_bytes()
    other = builtin_path("tiny-llama", tmp_path / "elsewhere")
    assert (other / "model.safetensors").read_bytes() == weights, "same recipe, same weights"
    # a stale recipe is rebuilt in place; nothing but the final folders is left behind
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    (folder / RECIPE_FILE).write_text(json.dumps({**recipe, "recipe_version": -1}))
    assert builtin_path("tiny-llama", tmp_path) == folder
    assert json.loads((folder / RECIPE_FILE).read_text()) == recipe
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama"]


def test_unknown_models_and_local_paths(tmp_path: Path) -> None:
    engine = TorchEngine(CheckpointStore(tmp_path / "ckpt"), device="cpu")
    for name in ("definitely-not/a-model", str(tmp_path / "missing-folder")):
        with pytest.raises(ts.NotFoundError) as info:
            engine.create_model(name, ts.LoraConfig(rank=2))
        message = str(info.value)
        assert "local path" in message and "save_pretrained" in message and "tiny-llama" in message
        with pytest.raises(ts.NotFoundError):
            engine.tokenizer(name)
    # any local Hugging Face causal LM folder works, e.g. a tiny Qwen2 saved by save_pretrained
    from transformers import AutoModelForCausalLM, Qwen2Config

    local = tmp_path / "my-qwen2"
    config = Qwen2Config(
        vocab_size=len(train_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(local)
    train_tokenizer().save_pretrained(local)
    listed = TorchEngine(CheckpointStore(tmp_path / "ckpt"), device="cpu", models=[str(local)], max_context_length=48)
    assert [(m.model_name, m.max_context_length) for m in listed.supported_models()] == [
        ("tiny-llama", 48),
        ("tiny-qwen3", 48),
        (str(local), 48),
    ]
    spec = listed.create_model(str(local), ts.LoraConfig(rank=2, seed=0))
    assert spec.max_context_length == 48
    state = listed.read_state(spec.model_id)
    assert "lm_head.lora_A" in state.weights, "lm_head is adapted even when tied to the embedding"
    datum = ts.Datum(model_input=ts.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={"target_tokens": [2, 3, 4]})
    listed.forward_backward(spec.model_id, [datum], "cross_entropy", {}, True)
    listed.optim_step(spec.model_id, ts.AdamParams(learning_rate=1e-2))
    embed = listed.bases.get(str(local)).model.get_input_embeddings().weight
    assert not embed.requires_grad


def test_service_client_end_to_end(tmp_path: Path) -> None:
    with ts.ServiceClient(backend="torch", checkpoint_dir=tmp_path) as svc:
        models = svc.get_server_capabilities().supported_models
        assert models[0].model_name == "tiny-llama" and models[0].max_context_length == 256
        tc = svc.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result()
        tok = tc.get_tokenizer()
        tokens = tok.encode("She sells sea shells by the sea shore.")
        datum = ts.Datum(
            model_input=ts.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0 / len(tokens)] * (len(tokens) - 1)},
        )
        futures = []
        for _ in range(6):  # pipelined: submit everything, then wait
            futures.append(tc.forward_backward([datum], "cross_entropy"))
            futures.append(tc.optim_step(ts.AdamParams(learning_rate=3e-2)))
        losses = [f.result().metrics["loss:sum"] for f in futures[::2]]
        assert losses[-1] < 0.5 * losses[0], losses
        path = tc.save_state("end").result().path
        resumed = svc.create_training_client_from_state_with_optimizer(path).result()
        a = resumed.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
        b = tc.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
        np.testing.assert_array_equal(a, b)
        sampler = tc.save_weights_and_get_sampling_client().result()
        lps = sampler.compute_logprobs(ts.ModelInput.from_ints(tokens)).result()
        np.testing.assert_allclose(np.array(lps[1:], dtype=np.float64), b, rtol=0, atol=1e-4)
        with pytest.raises(ts.NotFoundError):
            svc.create_lora_training_client(base_model="no-such-model", rank=4).result()


def test_concurrent_clients_are_serialised_and_isolated(tmp_path: Path) -> None:
    backend = TorchBackend(checkpoint_dir=tmp_path, device="cpu")

    async def main() -> list[Any]:
        await backend.start()
        specs = await asyncio.gather(
            *(backend.create_model("tiny-llama", ts.LoraConfig(rank=4, seed=s)) for s in (1, 1, 2))
        )
        datum = ts.Datum(model_input=ts.ModelInput.from_ints([3, 4, 5]), loss_fn_inputs={"target_tokens": [4, 5, 6]})

        async def train(model_id: str, steps: int) -> None:
            for _ in range(steps):
                await backend.forward_backward(model_id, [datum], "cross_entropy", {}, True)
                await backend.optim_step(model_id, ts.AdamParams(learning_rate=1e-2))

        await asyncio.gather(train(specs[0].model_id, 3), train(specs[1].model_id, 3), train(specs[2].model_id, 1))
        states = [await backend.read_state(s.model_id) for s in specs]
        await backend.close()
        return states

    a, b, c = asyncio.run(main())
    assert a.step == b.step == 3 and c.step == 1
    for name, value in a.weights.items():
        np.testing.assert_array_equal(value, b.weights[name])
    assert set(BUILTIN_MODELS) == {"tiny-llama", "tiny-qwen3"}


def test_seeded_adapters_match_across_concurrent_engines(tmp_path: Path) -> None:
    """LORA-1: one seed, one initial adapter, even while another engine in the same process creates
    adapters at the same time (torch's global generator is shared; before ``seeded_init`` 11 of 12
    such creations drew interleaved values)."""
    import threading

    weights: dict[int, list[dict[str, np.ndarray]]] = {}
    errors: list[BaseException] = []

    def engine(index: int) -> None:
        backend = TorchBackend(checkpoint_dir=tmp_path / str(index), device="cpu")

        async def main() -> list[dict[str, np.ndarray]]:
            await backend.start()
            try:
                out = []
                for _ in range(4):
                    spec = await backend.create_model("tiny-llama", ts.LoraConfig(rank=4, seed=7))
                    out.append((await backend.read_state(spec.model_id)).weights)
                return out
            finally:
                await backend.close()

        try:
            weights[index] = asyncio.run(main())
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=engine, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    reference = weights[0][0]
    assert any(np.abs(v).max() > 0 for v in reference.values())
    for index in (0, 1):
        for state in weights[index]:
            for name, value in reference.items():
                np.testing.assert_array_equal(state[name], value, err_msg=f"engine {index}: {name}")
