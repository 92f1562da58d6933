"""A run interrupted after a checkpoint and resumed from it reproduces the uninterrupted run exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tinker_std.cookbook import common, rl, sft


class Interrupted(Exception):
    pass


def interrupt_after(step: int) -> Any:
    def on_step(metrics: dict[str, Any]) -> None:
        if metrics["step"] == step:
            raise Interrupted

    return on_step


def rows(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_resume_restores_step_data_order_schedule_and_optimizer(tmp_path: Path) -> None:
    # 9 training examples in batches of 4: epochs end inside steps 2, 4 and 6, so the data order
    # after the checkpoint at step 3 depends on the restored RNG and order; cosine + warmup makes
    # every step's learning rate different; AdamW's moments carry over through the checkpoint.
    records = common.load_jsonl("demo:chat")[:10]
    config = sft.SFTConfig(
        backend="mock",
        steps=8,
        batch_size=4,
        eval_every=3,
        save_every=3,
        lr_schedule="cosine",
        warmup_steps=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        plot=False,
    )
    full = sft.run(dataclasses.replace(config, log_dir=str(tmp_path / "a")), records)

    log_b = tmp_path / "b"
    with pytest.raises(Interrupted):
        sft.run(dataclasses.replace(config, log_dir=str(log_b)), records, on_step=interrupt_after(4))
    assert [r["step"] for r in rows(log_b)] == [0, 1, 2, 3, 4]
    state = json.loads((log_b / "run_state.json").read_text())
    assert state["step"] == 3 and state["lr_schedule"]["next_lr"] == full[3]["lr"]

    resumed = sft.run(dataclasses.replace(config, log_dir=str(log_b), resume=state["checkpoint"]), records)
    assert [m["step"] for m in resumed] == [3, 4, 5, 6, 7]
    assert resumed == full[3:]  # bit-identical metrics, eval_nll included
    assert rows(log_b) == rows(tmp_path / "a")  # the log was cut back to the checkpoint and continued


def test_rl_resume_replays_prompts_and_sampling_seeds(tmp_path: Path) -> None:
    config = rl.RLConfig(
        backend="mock",
        env="choice",
        num_choices=5,
        steps=5,
        groups_per_batch=2,
        group_size=4,
        save_every=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        plot=False,
    )
    full = rl.run(dataclasses.replace(config, log_dir=str(tmp_path / "a")))
    log_b = tmp_path / "b"
    with pytest.raises(Interrupted):
        rl.run(dataclasses.replace(config, log_dir=str(log_b)), on_step=interrupt_after(2))
    resumed = rl.run(dataclasses.replace(config, log_dir=str(log_b), resume=str(log_b / "run_state.json")))
    assert [m["step"] for m in resumed] == [2, 3, 4]
    assert resumed == full[2:]
