"""The same recipe files run on the ``torch`` backend (tiny-llama, built offline) and their metrics move.

Settings mirror the mock tests; thresholds leave a margin below what was measured on CPU with one
thread (SFT train NLL 7.2 -> ~1.8, RL reward 0.09 -> ~0.8, DPO loss 0.693 -> 0.026 with accuracy 1.0,
off-policy top-8 KL 5.6 -> 1.6, on-policy KL from a 4-step SFT student 3.9 -> 1.7).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

from tinker_std.cookbook import common, distill, dpo, rl, sft

pytest.importorskip("transformers")
pytest.importorskip("peft")

BACKEND, MODEL = "torch", "tiny-llama"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def teacher(ckpt_dir: str) -> str:
    log_dir = tempfile.mkdtemp()
    config = sft.SFTConfig(backend=BACKEND, base_model=MODEL, steps=15, eval_fraction=0, log_dir=log_dir,
                           checkpoint_dir=ckpt_dir, plot=False, learning_rate=1e-2)  # fmt: skip
    sft.run(config)
    return common.latest_checkpoint(Path(log_dir))


def test_sft_nll_falls_on_torch(ckpt_dir: str) -> None:
    config = sft.SFTConfig(backend=BACKEND, base_model=MODEL, steps=12, batch_size=8, eval_every=4,
                           learning_rate=1e-2, checkpoint_dir=ckpt_dir, plot=False)  # fmt: skip
    history = sft.run(config)
    train = [m["train_nll"] for m in history]
    evals = [m["eval_nll"] for m in history if "eval_nll" in m]
    assert mean(train[-3:]) < 0.5 * train[0], train
    assert evals[-1] < evals[0], evals


def test_rl_on_the_choice_env_learns_on_torch(ckpt_dir: str) -> None:
    config = rl.RLConfig(backend=BACKEND, base_model=MODEL, env="choice", num_choices=5, steps=10,
                         groups_per_batch=4, group_size=8, learning_rate=1e-2, checkpoint_dir=ckpt_dir)  # fmt: skip
    rewards = [m["reward"] for m in rl.run(config)]
    assert rewards[0] <= 0.35, rewards  # chance is 1/5
    assert mean(rewards[-3:]) > 0.5, rewards


def test_dpo_accuracy_rises_and_loss_drops_below_ln2_on_torch(ckpt_dir: str) -> None:
    pairs = common.load_jsonl("demo:preferences")[:16]
    config = dpo.DPOConfig(backend=BACKEND, base_model=MODEL, steps=8, batch_size=16, learning_rate=1e-2,
                           checkpoint_dir=ckpt_dir)  # fmt: skip
    history = dpo.run(config, pairs)
    losses = [m["loss"] for m in history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference (fp32 tolerance)
    assert losses[-1] < math.log(2) - 0.3, losses
    assert history[-1]["accuracy"] >= 0.9, history


def test_off_policy_topk_distillation_kl_falls_on_torch(teacher: str, ckpt_dir: str) -> None:
    config = distill.DistillConfig(backend=BACKEND, base_model=MODEL, teacher=teacher, mode="off_policy", steps=10,
                                   topk=8, learning_rate=1e-2, checkpoint_dir=ckpt_dir)  # fmt: skip
    kl = [m["kl"] for m in distill.run(config)]
    assert kl[-1] < 0.5 * kl[0], kl


def test_on_policy_distillation_kl_falls_on_torch(teacher: str, ckpt_dir: str) -> None:
    """A student that has had 4 SFT steps (distillation's usual starting point) moves towards the
    15-step teacher. Measured with seeds 0..4: mean KL of the last 3 steps 0.48..0.64 of the first
    3. From the untrained base the KL does not fall within 12 steps (5.3 -> 5.0..5.9): 16 samples per
    prompt rarely hit the tokens the teacher prefers among 384."""
    log_dir = tempfile.mkdtemp()
    sft.run(sft.SFTConfig(backend=BACKEND, base_model=MODEL, steps=4, eval_fraction=0, log_dir=log_dir,
                          checkpoint_dir=ckpt_dir, plot=False, learning_rate=1e-2))  # fmt: skip
    student = common.latest_checkpoint(Path(log_dir))
    config = distill.DistillConfig(backend=BACKEND, base_model=MODEL, teacher=teacher, init_from=student, steps=12,
                                   max_tokens=8, learning_rate=1e-2, checkpoint_dir=ckpt_dir)  # fmt: skip
    kl = [m["kl"] for m in distill.run(config)]
    assert all(math.isfinite(k) and k > 0 for k in kl), kl
    assert mean(kl[-3:]) < 0.75 * mean(kl[:3]), kl
