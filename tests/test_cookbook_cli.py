"""``tinker-std <recipe>``: every recipe runs from the command line, logs, plots and resumes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinker_std.cli import main
from tinker_std.cookbook.common import latest_checkpoint


def rows(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def assert_curves(log_dir: Path) -> None:
    png = (log_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_every_recipe_runs_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--backend", "mock", "--model", "mock/tiny", "--checkpoint-dir", str(tmp_path / "ckpt")]

    sft_dir = tmp_path / "sft"
    args = "--data demo:chat --steps 4 --batch-size 4 --lr 0.02 --lr-schedule cosine --save-every 2".split()
    assert main(["sft", *common, *args, "--log-dir", str(sft_dir)]) == 0
    out = capsys.readouterr().out
    assert "train_nll: first" in out and "checkpoint: tinker://" in out
    assert [r["step"] for r in rows(sft_dir)] == [0, 1, 2, 3]
    assert_curves(sft_dir)
    teacher = latest_checkpoint(sft_dir)
    assert teacher.endswith("/weights/step_000004")

    rl_dir = tmp_path / "rl"
    args = "--env choice --steps 2 --group-size 4 --groups-per-batch 2 --loss-fn ppo".split()
    assert main(["rl", *common, *args, "--log-dir", str(rl_dir)]) == 0
    assert "reward: first" in capsys.readouterr().out
    assert [set(r) >= {"step", "reward", "lr"} for r in rows(rl_dir)] == [True, True]
    assert_curves(rl_dir)

    dpo_dir = tmp_path / "dpo"
    assert main(["dpo", *common, "--steps", "2", "--batch-size", "4", "--beta", "0.2", "--log-dir", str(dpo_dir)]) == 0
    assert rows(dpo_dir)[0]["accuracy"] == 0.5
    assert_curves(dpo_dir)

    for mode in ("on_policy", "off_policy"):
        log_dir = tmp_path / mode
        own = "--samples-per-prompt 2 --max-tokens 8" if mode == "on_policy" else "--topk 4"
        args = f"--mode {mode} --steps 2 --batch-size 2 {own}".split()
        assert main(["distill", *common, "--teacher", teacher, *args, "--log-dir", str(log_dir)]) == 0
        assert all(r["kl"] > 0 for r in rows(log_dir))
        assert_curves(log_dir)

    eval_dir = tmp_path / "eval"
    args = "--data demo:arithmetic --limit 4 --max-tokens 4".split()
    assert main(["eval", *common, "--model-path", teacher, *args, "--log-dir", str(eval_dir)]) == 0
    (row,) = rows(eval_dir)
    assert row["num_examples"] == 4 and row["nll"] > 0 and 0 <= row["accuracy"] <= 1
    assert "accuracy: first" in capsys.readouterr().out


def test_an_asked_for_log_without_its_package_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--wandb`` without the wandb package: exit status 2 and one error naming the flag and how to
    install it, before anything runs (no log folder, no checkpoint). Before, the run went on
    without the log it was asked for, after one line on stderr."""
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    log_dir, ckpt = tmp_path / "rl", tmp_path / "ckpt"
    args = ["rl", "--backend", "mock", "--checkpoint-dir", str(ckpt), "--steps", "1", "--wandb"]
    assert main([*args, "--log-dir", str(log_dir)]) == 2
    err = capsys.readouterr().err
    assert "tinker-std rl: error: --wandb: the wandb package is not installed (pip install wandb)" in err
    assert not log_dir.exists() and not (ckpt.exists() and any(ckpt.rglob("*")))


def test_tensorboard_log_holds_every_metric_of_every_step(tmp_path: Path) -> None:
    """``--tensorboard`` writes a TensorBoard event log in the log dir whose scalars are exactly the
    numeric metrics of ``metrics.jsonl``, step by step (as float32, TensorBoard's scalar type)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "sft"
    args = ["sft", "--backend", "mock", "--checkpoint-dir", str(tmp_path / "ckpt"), "--data", "demo:chat"]
    args += "--steps 3 --batch-size 4 --lr-schedule cosine --no-progress --no-plot --tensorboard".split()
    assert main([*args, "--log-dir", str(log_dir)]) == 0
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows(log_dir):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                expected.setdefault(key, []).append((row["step"], float(np.float32(value))))
    assert {"train_nll", "lr"} <= set(expected)
    events = EventAccumulator(str(log_dir)).Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, points in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(key)] == points, key


def test_cli_resume_from_a_checkpoint_path_continues_exactly(tmp_path: Path) -> None:
    args = ["sft", "--backend", "mock", "--checkpoint-dir", str(tmp_path / "ckpt")]
    args += "--steps 4 --batch-size 3 --save-every 2 --eval-every 2 --no-progress --no-plot".split()
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*args, "--log-dir", str(first)]) == 0
    assert main([*args, "--log-dir", str(second)]) == 0
    step2 = json.loads((second / "checkpoints.jsonl").read_text().splitlines()[0])
    assert step2["step"] == 2
    assert main([*args, "--log-dir", str(second), "--resume", step2["checkpoint"]]) == 0
    assert rows(second) == rows(first)
    assert not (second / "curves.png").exists()


def test_resume_with_an_unknown_checkpoint_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoints\.jsonl"):
        main(["sft", "--backend", "mock", "--log-dir", str(tmp_path), "--resume", "tinker://nope/weights/x"])


def test_the_demo_and_backends_commands_still_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    assert "mock\t" in capsys.readouterr().out
