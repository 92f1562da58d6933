"""A 50-step SFT on the mock backend more than halves ``loss:sum``; the demo command runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinker_std.cli import main
from tinker_std.cookbook.sft import SFTConfig, run_sft


def test_fifty_step_sft_on_mock_more_than_halves_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    losses = run_sft(SFTConfig(backend="mock", steps=50))
    assert len(losses) == 50
    assert losses[-1] < 0.5 * losses[0], losses


def test_demo_command_runs_every_stage_on_mock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    argv = ["demo", "--backend", "mock", "--sft-steps", "4", "--rl-steps", "1", "--log-dir", str(tmp_path / "logs")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("before |") == 3 and out.count("after  |") == 3
    assert "mean reward per step" in out and "SFT train_nll first step" in out
    assert (tmp_path / "logs" / "sft" / "metrics.jsonl").is_file() and (
        tmp_path / "logs" / "rl" / "run_state.json"
    ).is_file()
