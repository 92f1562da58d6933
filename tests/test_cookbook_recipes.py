"""Each recipe runs a few steps on ``mock`` and its metric moves the right way."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

import tinker_std as ts
from tinker_std.backends.mock import ByteTokenizer, MockBackend
from tinker_std.cookbook import common, distill, dpo, evaluate, rl, sft


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, ckpt_dir: str) -> str:
    """An SFT checkpoint on the demo chat data: the teacher of the distillation tests."""
    log_dir = tmp_path_factory.mktemp("teacher")
    sft.run(
        sft.SFTConfig(
            backend="mock", steps=15, eval_fraction=0, log_dir=str(log_dir), checkpoint_dir=ckpt_dir, plot=False
        )
    )
    return common.latest_checkpoint(log_dir)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_sft_nll_falls_on_train_and_held_out(tmp_path: Path) -> None:
    config = sft.SFTConfig(
        backend="mock",
        steps=12,
        batch_size=8,
        eval_every=4,
        log_dir=str(tmp_path),
        plot=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    history = sft.run(config)
    assert [m["step"] for m in history] == list(range(12))
    train = [m["train_nll"] for m in history]
    evals = [m["eval_nll"] for m in history if "eval_nll" in m]
    assert len(evals) == 4  # steps 0, 4, 8 and the last
    assert train[0] > 6.0 and mean(train[-3:]) < 0.5 * train[0], train
    assert evals[-1] < 0.75 * evals[0], evals
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == history
    state = json.loads((tmp_path / "run_state.json").read_text())
    assert state["step"] == 12 and state["checkpoint"].endswith("/weights/step_000012")


def test_sft_lr_schedule_is_applied_on_the_client() -> None:
    config = sft.SFTConfig(
        backend="mock", steps=6, batch_size=2, eval_fraction=0, lr_schedule="linear", warmup_steps=2, learning_rate=0.01
    )
    lrs = [m["lr"] for m in sft.run(config, common.load_jsonl("demo:chat")[:4])]
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.0075, 0.005, 0.0025])


def test_rl_on_the_choice_env_starts_near_chance_and_learns() -> None:
    config = rl.RLConfig(backend="mock", env="choice", num_choices=5, steps=10, groups_per_batch=4, group_size=8)
    rewards = [m["reward"] for m in rl.run(config)]
    assert rewards[0] <= 0.35, rewards  # chance is 1/5
    assert mean(rewards[-3:]) > 0.5, rewards


def test_rl_with_ppo_and_a_kl_penalty_reports_kl_to_the_base_model() -> None:
    config = rl.RLConfig(
        backend="mock",
        env="choice",
        num_choices=5,
        steps=4,
        groups_per_batch=2,
        group_size=4,
        loss_fn="ppo",
        kl_coef=0.1,
    )
    history = rl.run(config)
    assert abs(history[0]["kl_base"]) < 1e-9  # the first policy is the base model
    assert all(math.isfinite(m["loss"]) for m in history if "loss" in m)
    assert abs(history[-1]["kl_base"]) > 1e-3, history


def test_rl_arithmetic_env_rewards_the_right_number() -> None:
    renderer = rl.get_renderer(ByteTokenizer())
    env = rl.ArithmeticEnv(renderer)
    import random

    prompt, answer = env.sample_prompt(random.Random(0))
    assert ByteTokenizer().decode(prompt).startswith("user: What is ") and isinstance(answer, int)
    assert env.reward(answer, list(f" {answer}\n".encode())) == 1.0
    assert env.reward(answer, list(f" {answer + 1}\n".encode())) == 0.0
    assert env.reward(answer, list(b" no idea")) == 0.0


def test_dpo_accuracy_rises_and_loss_drops_below_ln2() -> None:
    pairs = common.load_jsonl("demo:preferences")[:16]
    history = dpo.run(dpo.DPOConfig(backend="mock", steps=8, batch_size=16, learning_rate=1e-2), pairs)
    losses = [m["loss"] for m in history]
    accuracy = [m["accuracy"] for m in history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: every margin is 0
    assert accuracy[0] == 0.5
    assert losses[-1] < math.log(2) - 0.3, losses
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert accuracy[-1] >= 0.9 and history[-1]["margin"] > 1.0, accuracy


def test_dpo_forward_reference_matches_the_sampler_reference() -> None:
    pairs = common.load_jsonl("demo:preferences")[:4]
    config = dpo.DPOConfig(backend="mock", steps=2, batch_size=4)
    by_sampler = dpo.run(config, pairs)
    by_forward = dpo.run(dataclasses.replace(config, reference="forward"), pairs)
    for a, b in zip(by_sampler, by_forward, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_on_policy_distillation_kl_falls(teacher: str, ckpt_dir: str) -> None:
    config = distill.DistillConfig(
        backend="mock", teacher=teacher, steps=8, max_tokens=8, learning_rate=2e-2, checkpoint_dir=ckpt_dir
    )
    kl = [m["kl"] for m in distill.run(config)]
    assert kl[0] > 4.0, kl
    assert mean(kl[-3:]) < 0.6 * mean(kl[:3]), kl


def test_off_policy_topk_distillation_kl_falls(teacher: str, ckpt_dir: str) -> None:
    config = distill.DistillConfig(
        backend="mock", teacher=teacher, mode="off_policy", steps=10, topk=8, checkpoint_dir=ckpt_dir
    )
    kl = [m["kl"] for m in distill.run(config)]
    assert kl[0] > 3.0, kl
    assert kl[-1] < 0.3 * kl[0], kl


class ShiftedBytes(ByteTokenizer):
    """Same vocabulary size and EOS, but other ids for the same text."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [(b + 1) % 256 for b in text.encode("utf-8")]


class ShiftedMock(MockBackend):
    name = "mock-shifted"

    def get_tokenizer(self, base_model: str) -> ts.Tokenizer:
        return ShiftedBytes(base_model)


def test_a_teacher_with_another_tokenizer_is_refused() -> None:
    with ts.ServiceClient(backend=ShiftedMock) as other:
        foreign = other.create_sampling_client(base_model="mock/tiny").result()
        with pytest.raises(ts.BadRequestError) as info:
            distill.run(distill.DistillConfig(backend="mock", steps=1), teacher=foreign)
    assert info.value.field == "teacher"
    with pytest.raises(ts.BadRequestError, match="teacher"):
        distill.run(distill.DistillConfig(backend="mock", steps=1))  # no teacher named


def test_evaluate_scores_a_trained_checkpoint_above_the_base_model(tmp_path: Path) -> None:
    records = common.load_jsonl("demo:arithmetic")[:8]
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    log_dir, ckpt = tmp_path / "sft", str(tmp_path / "ckpt")
    sft.run(
        sft.SFTConfig(
            backend="mock",
            steps=25,
            batch_size=8,
            eval_fraction=0,
            data=str(data),
            log_dir=str(log_dir),
            checkpoint_dir=ckpt,
            plot=False,
        )
    )
    base = evaluate.run(evaluate.EvalConfig(backend="mock", data=str(data), checkpoint_dir=ckpt))[0]
    tuned = evaluate.run(
        evaluate.EvalConfig(
            backend="mock", data=str(data), checkpoint_dir=ckpt, model_path=common.latest_checkpoint(log_dir)
        )
    )[0]
    assert base["accuracy"] == 0.0 and base["nll"] > 4.0, base
    assert tuned["nll"] < 0.5 * base["nll"], tuned
    assert tuned["accuracy"] >= 0.5, tuned
