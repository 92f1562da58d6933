"""``TorchSettings``: the fast paths' switches, read once per engine from ``TINKER_STD_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinker_std.backends.torch import TorchEngine, TorchSettings
from tinker_std.checkpoints import CheckpointStore

FLAGS = {
    "TINKER_STD_PACKED_WEIGHTS": "packed_weights",
    "TINKER_STD_FUSED_LORA": "fused_lora",
    "TINKER_STD_FUSED_HEAD": "fused_head",
    "TINKER_STD_SHARED_PREFIX": "shared_prefix",
    "TINKER_STD_MERGED_LORA": "merged_lora",
    "TINKER_STD_FUSED_DECODE": "fused_decode",
}


def test_defaults_turn_every_fast_path_on() -> None:
    settings = TorchSettings.from_env({})
    assert settings == TorchSettings()
    assert all(getattr(settings, field) for field in FLAGS.values())
    assert settings.merged_adapters == 2


@pytest.mark.parametrize("variable", sorted(FLAGS))
def test_each_variable_turns_its_own_path_off(variable: str) -> None:
    settings = TorchSettings.from_env({variable: "0"})
    for name, field in FLAGS.items():
        assert getattr(settings, field) is (name != variable), field
    assert TorchSettings.from_env({variable: "1"}) == TorchSettings()


def test_the_merged_adapter_cache_size() -> None:
    assert TorchSettings.from_env({"TINKER_STD_MERGED_ADAPTERS": "5"}).merged_adapters == 5
    assert TorchSettings.from_env({"TINKER_STD_MERGED_ADAPTERS": "-3"}).merged_adapters == 0
    with pytest.raises(ValueError, match="merged_adapters"):
        TorchSettings(merged_adapters=-1)


def test_an_engine_reads_the_environment_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_FUSED_HEAD", "0")
    engine = TorchEngine(CheckpointStore(tmp_path), device="cpu")
    try:
        assert not engine.settings.fused_head
        monkeypatch.setenv("TINKER_STD_FUSED_HEAD", "1")  # later changes reach no running engine
        assert not engine.settings.fused_head
        engine.settings = TorchSettings(shared_prefix=False)  # replaced explicitly: the forward pass sees it
        assert engine.passes.settings == TorchSettings(shared_prefix=False)
    finally:
        engine.close()
