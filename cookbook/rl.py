"""Group-relative policy optimisation (GRPO-style RL) against an ``Env``.

One step::

    sampler = training.save_weights_and_get_sampling_client()        # snapshot of the policy
    for each of groups_per_batch prompts: sample group_size completions (seeded)
    reward each completion; advantage = reward - mean reward of its group
    (optional) advantage_t -= kl_coef * (logprob_t - base_logprob_t)  # KL penalty vs the base model
    forward_backward(datums, "importance_sampling" | "ppo")           # logprobs = the sampler's
    optim_step(AdamParams(learning_rate=lr_at(step)))

A group whose completions all score the same has zero advantage everywhere and is left out. The
advantages are divided by the number of completions in the batch, so the (summed, LOSS-1) loss is a
per-completion mean. ``Env`` is any object with ``max_tokens``, ``stop``, ``sample_prompt(rng)``
and ``reward(answer, completion_tokens)``; three are built in:

* ``ArithmeticEnv``: "What is a + b?" rendered as a chat turn; reward 1 for the right number.
* ``DatasetEnv``: prompts and expected answers from a JSONL (chat or prompt/completion records).
* ``ChoiceEnv``: a one-token test env where even a random policy succeeds about ``1/num_choices``
  of the time, so learning starts at once: prompt ``k`` asks for class ``k``, and a completion's
  first token id modulo ``num_choices`` is the class it picked.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import tinker_std as ts

from .common import OnStep, Run, RunConfig, load_jsonl
from .evaluate import answers_match
from .renderers import Renderer, Stop, get_renderer, make_datum, prompt_of_record
from .run_config import refuse_set_fields

__all__ = [
    "RLConfig", "Env", "ArithmeticEnv", "DatasetEnv", "ChoiceEnv", "ENV_FIELDS", "make_env", "group_advantages", "run",
]  # fmt: skip


class Env(Protocol):
    """A source of prompts, each with a hidden answer, and a reward for a sampled completion."""

    max_tokens: int
    stop: Stop

    def sample_prompt(self, rng: random.Random) -> tuple[list[int], Any]:
        """``(prompt tokens, answer)``; draw randomness only from ``rng`` (resume replays it)."""
        ...

    def reward(self, answer: Any, completion: list[int]) -> float: ...


class ArithmeticEnv:
    """``What is a + b?`` with ``0 <= a, b <= max_operand``; reward 1 if the last number on the reply's first
    line is right (so both ``7`` and ``3 + 4 = 7`` count)."""

    def __init__(self, renderer: Renderer, max_operand: int = 9, max_tokens: int = 8) -> None:
        self.renderer, self.max_operand, self.max_tokens = renderer, max_operand, max_tokens
        self.stop = renderer.stop

    def sample_prompt(self, rng: random.Random) -> tuple[list[int], Any]:
        a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
        return self.renderer.generation_prompt([{"role": "user", "content": f"What is {a} + {b}?"}]), a + b

    def reward(self, answer: Any, completion: list[int]) -> float:
        first_line = self.renderer.parse_response(completion).strip().split("\n", 1)[0]
        numbers = re.findall(r"-?\d+", first_line)
        return 1.0 if numbers and int(numbers[-1]) == answer else 0.0


class DatasetEnv:
    """Prompts of a list of records; reward 1 when the reply's first line equals the record's answer."""

    def __init__(self, renderer: Renderer, records: Sequence[Mapping[str, Any]], max_tokens: int = 16) -> None:
        self.renderer, self.max_tokens = renderer, max_tokens
        self.problems = [prompt_of_record(renderer, record) for record in records]
        self.stop = self.problems[0][2]

    def sample_prompt(self, rng: random.Random) -> tuple[list[int], Any]:
        prompt, answer, _ = self.problems[rng.randrange(len(self.problems))]
        return prompt, answer

    def reward(self, answer: Any, completion: list[int]) -> float:
        return 1.0 if answers_match(self.renderer.parse_response(completion), str(answer)) else 0.0


class ChoiceEnv:
    """Test env: ``Pick class k of n:``; the first sampled token ``t`` picks class ``t % n``."""

    max_tokens = 1
    stop: Stop = None

    def __init__(self, tokenizer: Any, num_choices: int = 4, targets: Sequence[int] | None = None) -> None:
        if not 2 <= num_choices <= 10:
            raise ValueError("num_choices must be between 2 and 10")
        self.tokenizer, self.num_choices = tokenizer, num_choices
        self.targets = list(range(num_choices)) if targets is None else list(targets)

    def sample_prompt(self, rng: random.Random) -> tuple[list[int], Any]:
        k = self.targets[rng.randrange(len(self.targets))]
        return list(self.tokenizer.encode(f"Of {self.num_choices} classes, pick class {k}", add_special_tokens=True)), k

    def reward(self, answer: Any, completion: list[int]) -> float:
        return 1.0 if completion and completion[0] % self.num_choices == answer else 0.0


@dataclass(frozen=True)
class RLConfig(RunConfig):
    env: str = "arithmetic"  # arithmetic | choice | data
    data: str | None = None  # JSONL for env=data
    groups_per_batch: int = 4
    group_size: int = 8
    loss_fn: str = "importance_sampling"  # importance_sampling | ppo
    clip_low: float = 0.8  # ppo ratio bounds
    clip_high: float = 1.2
    kl_coef: float = 0.0  # > 0: penalise logprob - base_logprob per token, folded into advantages
    temperature: float = 1.0
    max_tokens: int | None = None  # None: the env's
    num_choices: int = 4  # env=choice
    renderer: str = "auto"

    READ_WHEN: ClassVar[Mapping[str, tuple[str, Callable[[Any], bool]]]] = {
        "data": ("--env data", lambda c: c.env == "data"),
        "num_choices": ("--env choice", lambda c: c.env == "choice"),
        "renderer": ("--env arithmetic or data", lambda c: c.env != "choice"),
        "clip_low": ("--loss-fn ppo", lambda c: c.loss_fn == "ppo"),
        "clip_high": ("--loss-fn ppo", lambda c: c.loss_fn == "ppo"),
    }


#: The ``RLConfig`` fields that only ``make_env`` reads.
ENV_FIELDS = ("env", "data", "num_choices", "renderer")


def make_env(config: RLConfig, tokenizer: Any) -> Env:
    renderer = get_renderer(tokenizer, config.renderer)
    if config.env == "arithmetic":
        return ArithmeticEnv(renderer)
    if config.env == "choice":
        return ChoiceEnv(tokenizer, config.num_choices)
    if config.env == "data":
        return DatasetEnv(renderer, load_jsonl(config.data or "demo:arithmetic"))
    raise ValueError(f"unknown env {config.env!r}; use arithmetic, choice or data")


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """Reward minus the group's mean reward."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def run(config: RLConfig, env: Env | None = None, on_step: OnStep | None = None) -> list[dict[str, Any]]:
    """Train for ``config.steps`` RL steps; returns one metrics dict per step run. With an ``env``
    of the caller's, the config's env fields (``ENV_FIELDS``) are not read, so setting any of them
    away from its default raises ``UnreadOption`` (``refuse_set_fields``)."""
    if config.loss_fn not in ("importance_sampling", "ppo"):
        raise ValueError("loss_fn must be importance_sampling or ppo")
    if env is not None:
        refuse_set_fields(config, ENV_FIELDS, "not read when run() is given an env of its own")
    loss_config = {"clip_low_threshold": config.clip_low, "clip_high_threshold": config.clip_high}
    with Run(config, "rl", show=("reward", "loss")) as run:
        training = run.training
        env = env if env is not None else make_env(config, training.get_tokenizer())
        base = run.service.create_sampling_client(base_model=run.base_model).result() if config.kl_coef else None
        max_tokens = config.max_tokens or env.max_tokens
        for step in range(run.start_step, config.steps):
            if run.checkpoint_due(step):
                run.save(step)
            sampler = training.save_weights_and_get_sampling_client().result()
            problems = [env.sample_prompt(run.rng) for _ in range(config.groups_per_batch)]
            futures = [
                sampler.sample(
                    ts.ModelInput.from_ints(prompt),
                    config.group_size,
                    ts.SamplingParams(
                        max_tokens=max_tokens,
                        temperature=config.temperature,
                        stop=env.stop,
                        seed=run.rng.randrange(2**31),
                    ),
                )
                for prompt, _ in problems
            ]
            rollouts = []  # (prompt, sequence, advantage)
            rewards: list[float] = []
            for (prompt, answer), future in zip(problems, futures, strict=True):
                sequences = future.result().sequences
                group = [env.reward(answer, seq.tokens) for seq in sequences]
                rewards += group
                advantages = group_advantages(group)
                if config.kl_coef or any(advantages):
                    rollouts += [(prompt, s, a) for s, a in zip(sequences, advantages, strict=True)]
            base_lps = [
                base.compute_logprobs(ts.ModelInput.from_ints(p + s.tokens)) if base is not None else None
                for p, s, _ in rollouts
            ]
            datums, kls = [], []
            n = config.groups_per_batch * config.group_size
            for (prompt, seq, adv), base_lp in zip(rollouts, base_lps, strict=True):
                q = list(seq.logprobs or [])
                per_token = [adv] * len(seq.tokens)
                if base_lp is not None:
                    ref = base_lp.result()[len(prompt) :]
                    kl = [lp - (r if r is not None else lp) for lp, r in zip(q, ref, strict=True)]
                    kls += kl
                    per_token = [a - config.kl_coef * k for a, k in zip(per_token, kl, strict=True)]
                tokens, pad = prompt + seq.tokens, [0.0] * (len(prompt) - 1)
                advantages = pad + [a / n for a in per_token]
                datums.append(
                    make_datum(tokens[:-1], target_tokens=tokens[1:], logprobs=pad + q, advantages=advantages)
                )
            metrics: dict[str, Any] = {
                "step": step,
                "lr": run.lr(step),
                "reward": sum(rewards) / len(rewards),
                "datums": len(datums),
            }
            if datums:
                fb = training.forward_backward(datums, config.loss_fn, loss_config if config.loss_fn == "ppo" else None)
                opt = training.optim_step(run.adam(step))
                metrics["loss"] = fb.result().metrics["loss:sum"]
                opt.result()
            if kls:
                metrics["kl_base"] = sum(kls) / len(kls)
            run.log(metrics, on_step)
        if run.checkpoint_due(config.steps):
            run.save(config.steps)
        return run.history
