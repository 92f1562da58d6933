"""Recipe options a run would not read, or that its checkpoint overrides, are refused by name.

Before, each was dropped without a word: ``tinker-std eval --rank 32 --lr 0.5`` evaluated as if they
were not there, and ``--init-from`` / ``--resume`` with a ``--rank`` or ``--base-model`` other
than the checkpoint's trained the checkpoint's rank and model all the same.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from tinker_std.cli import main
from tinker_std.cookbook import distill, evaluate, rl, sft
from tinker_std.cookbook.common import latest_checkpoint
from tinker_std.cookbook.run_config import UnreadOption

COMMON = ["--backend", "mock", "--no-progress", "--no-plot"]
RL = ["--env", "choice", "--steps", "1", "--group-size", "4", "--groups-per-batch", "1"]


def test_eval_offers_no_training_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *COMMON, "--rank", "32", "--log-dir", str(log_dir)])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --rank 32" in capsys.readouterr().err
    assert not log_dir.exists()


def test_a_run_that_does_not_train_refuses_training_fields(tmp_path: Path) -> None:
    log_dir = tmp_path / "eval"
    config = evaluate.EvalConfig(backend="mock", rank=32, learning_rate=0.5, log_dir=str(log_dir), plot=False)
    with pytest.raises(UnreadOption, match=r"^--rank, --learning-rate: this recipe does not train"):
        evaluate.run(config)
    assert not log_dir.exists()
    assert evaluate.run(evaluate.EvalConfig(backend="mock", limit=2, log_dir=str(log_dir), plot=False))


def test_a_rank_the_checkpoint_overrides_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [*COMMON, "--checkpoint-dir", str(tmp_path / "ckpt")]
    first = tmp_path / "sft"
    sft_args = ["sft", *common, "--steps", "2", "--batch-size", "2", "--rank", "4", "--save-every", "1"]
    assert main([*sft_args, "--log-dir", str(first)]) == 0
    start = latest_checkpoint(first)

    refused = tmp_path / "rl16"
    assert main(["rl", *common, *RL, "--init-from", start, "--rank", "16", "--log-dir", str(refused)]) == 2
    assert "tinker-std rl: error: --rank 16: the checkpoint of --init-from has LoRA rank 4" in capsys.readouterr().err
    assert not refused.exists()
    assert main(["rl", *common, *RL, "--init-from", start, "--rank", "8", "--log-dir", str(refused)]) == 2
    assert "--rank 8: the checkpoint of --init-from has LoRA rank 4" in capsys.readouterr().err  # 8: the default
    # the checkpoint's own rank, or none, is what a run's own command line gives: accepted
    assert main(["rl", *common, *RL, "--init-from", start, "--rank", "4", "--log-dir", str(tmp_path / "rl4")]) == 0
    assert main(["rl", *common, *RL, "--init-from", start, "--log-dir", str(tmp_path / "rl")]) == 0

    step1 = first / "run_state.json"
    assert main([*sft_args[:-4], "--rank", "16", "--log-dir", str(first), "--resume", str(step1)]) == 2
    assert "--rank 16: the checkpoint of --resume has LoRA rank 4" in capsys.readouterr().err
    assert main([*sft_args, "--log-dir", str(first), "--resume", str(step1)]) == 0


def test_a_base_model_the_checkpoint_overrides_is_refused(tmp_path: Path) -> None:
    ckpt = str(tmp_path / "ckpt")
    config = sft.SFTConfig(backend="torch", base_model="tiny-llama", steps=1, batch_size=2, eval_fraction=0,
                           checkpoint_dir=ckpt, log_dir=str(tmp_path / "sft"), plot=False)  # fmt: skip
    sft.run(config)
    start = latest_checkpoint(tmp_path / "sft")
    other = sft.SFTConfig(backend="torch", base_model="tiny-qwen3", init_from=start, steps=1, batch_size=2,
                          eval_fraction=0, checkpoint_dir=ckpt, log_dir=str(tmp_path / "b"), plot=False)  # fmt: skip
    with pytest.raises(
        UnreadOption, match=r"--base-model 'tiny-qwen3': the checkpoint of --init-from is of 'tiny-llama'"
    ):
        sft.run(other)
    assert not (tmp_path / "b").exists()


def test_an_option_its_mode_does_not_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Recipe options read only in one mode (``READ_WHEN``) are refused, naming the mode, in any
    other: before, ``--clip-low`` without ``--loss-fn ppo``, ``--max-tokens`` in off-policy
    distillation or ``--eval-every`` without held-out examples changed nothing."""
    common = [*COMMON, "--checkpoint-dir", str(tmp_path / "ckpt")]
    log_dir = tmp_path / "rl"
    assert main(["rl", *common, *RL, "--clip-low", "0.5", "--log-dir", str(log_dir)]) == 2
    assert "tinker-std rl: error: --clip-low: read only with --loss-fn ppo" in capsys.readouterr().err
    assert not log_dir.exists()
    assert main(["rl", *common, *RL, "--clip-low", "0.5", "--loss-fn", "ppo", "--log-dir", str(log_dir)]) == 0

    sft_args = ["sft", *common, "--steps", "1", "--eval-fraction", "0", "--eval-every", "2"]
    assert main([*sft_args, "--log-dir", str(tmp_path / "sft")]) == 2
    assert "--eval-every: read only with --eval-fraction above 0" in capsys.readouterr().err

    config = distill.DistillConfig(
        backend="mock", teacher="mock/tiny", mode="off_policy", max_tokens=8, temperature=0.5
    )
    with pytest.raises(UnreadOption, match=r"^--max-tokens: read only with --mode on_policy; --temperature: read"):
        distill.run(config)
    with pytest.raises(UnreadOption, match=r"^--topk: read only with --mode off_policy$"):
        distill.run(distill.DistillConfig(backend="mock", teacher="mock/tiny", topk=4))


def test_a_resumed_run_keeps_its_own_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Resumed without ``--seed``, a run continues with the seed it ran with, and a different seed
    is refused. Before, a resumed run took seed 0 whatever it ran with: SFT's held-out split, and
    so its training set, changed, and the resumed run's metrics differed from the uninterrupted
    run's."""
    base = ["sft", "--backend", "mock", "--checkpoint-dir", str(tmp_path / "ckpt")]
    base += "--steps 4 --batch-size 3 --save-every 2 --eval-every 2 --no-progress --no-plot".split()
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*base, "--seed", "5", "--log-dir", str(first)]) == 0
    assert main([*base, "--seed", "5", "--log-dir", str(second)]) == 0
    step2 = json.loads((second / "checkpoints.jsonl").read_text().splitlines()[0])["checkpoint"]
    assert main([*base, "--seed", "6", "--log-dir", str(second), "--resume", step2]) == 2
    assert "tinker-std sft: error: --seed 6: the run of --resume used seed 5" in capsys.readouterr().err
    assert main([*base, "--init-from", step2, "--log-dir", str(second), "--resume", step2]) == 2
    assert f"--init-from {step2}: the run of --resume started from a new adapter" in capsys.readouterr().err
    assert main([*base, "--log-dir", str(second), "--resume", step2]) == 0
    assert metrics(second) == metrics(first)


def metrics(log_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


class _EvenTokens:
    """An env of the caller's: reward 1 for an even first sampled token."""

    max_tokens = 1
    stop = None

    def sample_prompt(self, rng: random.Random) -> tuple[list[int], object]:
        return [rng.randrange(1, 50) for _ in range(4)], None

    def reward(self, answer: object, completion: list[int]) -> float:
        return float(bool(completion) and completion[0] % 2 == 0)


def test_rl_with_an_env_of_its_own_refuses_the_config_env_fields() -> None:
    """``rl.run(config, env=...)`` trains on the caller's env; the config's env fields are then
    not read, and setting one is refused (before, ``num_choices=5`` beside an env changed nothing)."""
    config = rl.RLConfig(backend="mock", steps=2, groups_per_batch=2, group_size=4, plot=False)
    with pytest.raises(UnreadOption, match=r"^--num-choices: not read when run\(\) is given an env of its own$"):
        rl.run(dataclasses.replace(config, num_choices=5), env=_EvenTokens())
    history = rl.run(config, env=_EvenTokens())
    assert [row["step"] for row in history] == [0, 1]
    assert all(0.0 <= row["reward"] <= 1.0 for row in history)
