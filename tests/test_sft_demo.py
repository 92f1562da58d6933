"""The README's main job: a 50-step SFT on the mock backend more than halves ``loss:sum``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tinker_std.cli import main
from tinker_std.cookbook.sft import SFTConfig, run_sft


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The mock's tiny float64 ops run fastest on one thread; on a busy machine more threads can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fifty_step_sft_on_mock_more_than_halves_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    losses = run_sft(SFTConfig(backend="mock", steps=50))
    assert len(losses) == 50
    assert losses[-1] < 0.5 * losses[0], losses


def test_demo_command_prints_the_falling_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    assert main(["demo", "--backend", "mock", "--steps", "5"]) == 0
    assert "loss:sum first step" in capsys.readouterr().out
