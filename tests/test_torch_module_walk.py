"""``module_walk.modules`` equals ``list(model.modules())`` through adapter changes: the cached walk
is dropped whenever ``adapters`` adds or removes an adapter's modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinker_std.backends.torch import TorchEngine
from tinker_std.backends.torch.fast import module_walk
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import LoraConfig


def test_the_cached_walk_follows_adapter_changes(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "tinker-std-cache"
    engine = TorchEngine(CheckpointStore(tmp_path / "ckpt"), device="cpu", cache_dir=cache)
    try:
        first = engine.create_model("tiny-llama", LoraConfig(rank=2, seed=0)).model_id
        model = engine.bases.loaded["tiny-llama"].model
        walked = module_walk.modules(model)
        assert walked == list(model.modules())
        assert module_walk.modules(model) is walked  # cached while nothing changes
        second = engine.create_model("tiny-llama", LoraConfig(rank=4, seed=1)).model_id
        grown = module_walk.modules(model)
        assert grown == list(model.modules()) and len(grown) > len(walked)
        engine.release_model(first)
        engine.release_model(second)
        assert module_walk.modules(model) == list(model.modules())
        assert len(module_walk.modules(model)) < len(walked)
    finally:
        engine.close()
