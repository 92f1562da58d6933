"""Distillation from a teacher: another base model, or a checkpoint (``tinker://...``).

Two modes:

* ``on_policy``: the student samples completions of the prompts; the teacher scores them with
  ``compute_logprobs``; each sampled token gets the advantage ``-kl_coef * (k - b)`` with
  ``k = student_lp - teacher_lp`` its per-token reverse-KL estimate (pushed down) and ``b`` the
  mean ``k`` of the step's tokens (``kl_baseline="mean"``; ``"none"``: ``b = 0``), trained with
  ``importance_sampling`` against the student's sampling logprobs. The baseline leaves the
  expected gradient unchanged (``E_q[grad log q] = 0``) and removes the common offset that
  otherwise pushes every sampled token down. ``kl`` is the mean per-token reverse-KL estimate of
  the step's samples.
* ``off_policy``: the dataset's completions are scored once by the teacher, keeping its
  ``topk`` most likely next tokens per position (``topk_prompt_logprobs``); the student trains on
  these soft targets with an ``(N, K)`` ``cross_entropy`` whose weights are the teacher's top-K
  probabilities, renormalised. ``kl`` is ``sum_k p_k (log p_k - student_lp_k)`` per completion
  token, measured before each update.

Teacher and student must share a tokenizer (token ids are compared position by position); a
teacher whose tokenizer differs is refused with ``BadRequestError`` (field ``teacher``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import tinker_std as ts

from .common import DataOrder, OnStep, Run, RunConfig, load_jsonl
from .renderers import get_renderer, make_datum, normalize_weights, prompt_of_record, render_record

__all__ = ["DistillConfig", "check_same_tokenizer", "open_teacher", "topk_datum", "run"]

_PROBE = "Hello, World! 0123456789 +-*/ ünïcødé 漢字\n\t<|im_end|></s>"


@dataclass(frozen=True)
class DistillConfig(RunConfig):
    teacher: str | None = None  # a base model name or a tinker:// checkpoint
    mode: str = "on_policy"  # on_policy | off_policy
    data: str = "demo:chat"
    batch_size: int = 4  # prompts (on_policy) or examples (off_policy) per step
    samples_per_prompt: int = 4
    max_tokens: int = 24
    temperature: float = 1.0
    kl_coef: float = 1.0
    kl_baseline: str = "mean"  # on_policy: mean | none (see the module docstring)
    topk: int = 8
    renderer: str = "auto"

    READ_WHEN: ClassVar[Mapping[str, tuple[str, Callable[[Any], bool]]]] = {
        **dict.fromkeys(
            ("samples_per_prompt", "max_tokens", "temperature", "kl_coef", "kl_baseline"),
            ("--mode on_policy", lambda c: c.mode == "on_policy"),
        ),
        "topk": ("--mode off_policy", lambda c: c.mode == "off_policy"),
    }


def check_same_tokenizer(student: Any, teacher: Any) -> None:
    """``BadRequestError`` (field ``teacher``) unless both tokenizers encode alike."""
    problems = []
    if getattr(student, "eos_token_id", None) != getattr(teacher, "eos_token_id", None):
        problems.append("different eos_token_id")
    if hasattr(student, "__len__") and hasattr(teacher, "__len__") and len(student) != len(teacher):
        problems.append(f"vocabulary sizes {len(student)} and {len(teacher)}")
    if student.encode(_PROBE, add_special_tokens=False) != teacher.encode(_PROBE, add_special_tokens=False):
        problems.append("different token ids for the same text")
    if not problems and hasattr(student, "get_vocab") and hasattr(teacher, "get_vocab"):
        if student.get_vocab() != teacher.get_vocab():
            problems.append("different vocabularies")
    if problems:
        raise ts.BadRequestError(
            "teacher",
            f"the teacher's tokenizer differs from the student's ({', '.join(problems)}); "
            "distillation compares token ids, so both must use the same tokenizer",
        )


def open_teacher(service: ts.ServiceClient, teacher: str) -> ts.SamplingClient:
    """A sampler over ``teacher``: a ``tinker://`` checkpoint path or a base model name."""
    if teacher.startswith("tinker://"):
        return service.create_sampling_client(model_path=teacher).result()
    return service.create_sampling_client(base_model=teacher).result()


def topk_datum(tokens: Sequence[int], weights: Sequence[float], topk: Sequence[Any], k: int) -> ts.Datum:
    """An ``(N, K)`` soft-target datum: rows with weight carry the teacher's top-K ids and its
    renormalised probabilities (times the row weight); other rows repeat the true token, weight 0."""
    targets, row_weights = [], []
    for i in range(1, len(tokens)):
        pairs = list(topk[i] or [])[:k]
        if weights[i] != 0 and pairs:
            probs = [math.exp(lp) for _, lp in pairs]
            total = sum(probs)
            targets.append([int(t) for t, _ in pairs] + [int(tokens[i])] * (k - len(pairs)))
            row_weights.append([weights[i] * p / total for p in probs] + [0.0] * (k - len(pairs)))
        else:
            targets.append([int(tokens[i])] * k)
            row_weights.append([0.0] * k)
    return make_datum(tokens[:-1], target_tokens=targets, weights=row_weights)


def _soft_kl(datums: Sequence[ts.Datum], output: ts.ForwardBackwardOutput) -> float:
    """Mean over weighted rows of ``sum_k p_k (log p_k - lp_k)`` with ``p`` the row's target distribution."""
    total, rows = 0.0, 0
    for datum, out in zip(datums, output.loss_fn_outputs, strict=True):
        for w_row, lp_row in zip(datum.loss_fn_inputs["weights"].tolist(), out["logprobs"].tolist(), strict=True):
            mass = sum(w_row)
            if mass <= 0:
                continue
            total += sum((w / mass) * (math.log(w / mass) - lp) for w, lp in zip(w_row, lp_row, strict=True) if w > 0)
            rows += 1
    return total / max(rows, 1)


def run(
    config: DistillConfig,
    teacher: ts.SamplingClient | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
    on_step: OnStep | None = None,
) -> list[dict[str, Any]]:
    """Distil ``teacher`` (or ``config.teacher``) into the student; one metrics dict per step run."""
    if config.mode not in ("on_policy", "off_policy"):
        raise ValueError("mode must be on_policy or off_policy")
    if config.kl_baseline not in ("mean", "none"):
        raise ValueError("kl_baseline must be mean or none")
    with Run(config, "distill", show=("kl",)) as run:
        if teacher is None:
            if not config.teacher:
                raise ts.BadRequestError("teacher", "name a teacher: a base model or a tinker:// checkpoint")
            teacher = open_teacher(run.service, config.teacher)
        training = run.training
        tokenizer = training.get_tokenizer()
        check_same_tokenizer(tokenizer, teacher.get_tokenizer())
        renderer = get_renderer(tokenizer, config.renderer)
        records = list(records) if records is not None else load_jsonl(config.data)
        order = DataOrder(len(records), min(config.batch_size, len(records)), run.rng, run.state.get("data"))

        soft: list[ts.Datum] = []
        if config.mode == "off_policy":
            for capability in ("topk_prompt_logprobs", "soft_targets"):
                if not run.service.capabilities.supports(capability):
                    raise ts.Unsupported(capability, run.service.backend_name)
            examples = [render_record(renderer, r) for r in records]
            scored = [
                teacher.sample(
                    ts.ModelInput.from_ints(tokens),
                    1,
                    ts.SamplingParams(max_tokens=1),
                    topk_prompt_logprobs=config.topk,
                )
                for tokens, _ in examples
            ]
            soft = [
                topk_datum(tokens, normalize_weights(weights), f.result().topk_prompt_logprobs or [], config.topk)
                for (tokens, weights), f in zip(examples, scored, strict=True)
            ]
        prompts = [prompt_of_record(renderer, r) for r in records]

        for step in range(run.start_step, config.steps):
            if run.checkpoint_due(step):
                run.save(step, data=order.state())
            picked = order.next_batch()
            metrics: dict[str, Any] = {"step": step, "lr": run.lr(step)}
            if config.mode == "off_policy":
                batch = [soft[i] for i in picked]
                fb = training.forward_backward(batch, "cross_entropy")
                opt = training.optim_step(run.adam(step))
                out = fb.result()
                metrics.update(loss=out.metrics["loss:sum"], kl=_soft_kl(batch, out))
                opt.result()
                run.log(metrics, on_step)
                continue
            sampler = training.save_weights_and_get_sampling_client().result()
            futures = [
                (
                    prompts[i][0],
                    sampler.sample(
                        ts.ModelInput.from_ints(prompts[i][0]),
                        config.samples_per_prompt,
                        ts.SamplingParams(
                            max_tokens=config.max_tokens,
                            temperature=config.temperature,
                            stop=prompts[i][2],
                            seed=run.rng.randrange(2**31),
                        ),
                    ),
                )
                for i in picked
            ]
            rollouts = [(prompt, seq) for prompt, f in futures for seq in f.result().sequences]
            scores = [teacher.compute_logprobs(ts.ModelInput.from_ints(p + s.tokens)) for p, s in rollouts]
            per_rollout = []
            for (prompt, seq), score in zip(rollouts, scores, strict=True):
                q = list(seq.logprobs or [])
                teacher_lp = score.result()[len(prompt) :]
                per_rollout.append([s - (t if t is not None else s) for s, t in zip(q, teacher_lp, strict=True)])
            kls = [k for kl in per_rollout for k in kl]
            baseline = sum(kls) / max(len(kls), 1) if config.kl_baseline == "mean" else 0.0
            datums = []
            for (prompt, seq), kl in zip(rollouts, per_rollout, strict=True):
                tokens, pad = prompt + seq.tokens, [0.0] * (len(prompt) - 1)
                advantages = pad + [-config.kl_coef * (k - baseline) / len(rollouts) for k in kl]
                q = pad + list(seq.logprobs or [])
                datums.append(make_datum(tokens[:-1], target_tokens=tokens[1:], logprobs=q, advantages=advantages))
            fb = training.forward_backward(datums, "importance_sampling")
            opt = training.optim_step(run.adam(step))
            metrics.update(
                loss=fb.result().metrics["loss:sum"],
                kl=sum(kls) / max(len(kls), 1),
                completion_len=len(kls) / len(rollouts),
            )
            opt.result()
            run.log(metrics, on_step)
        if run.checkpoint_due(config.steps):
            run.save(config.steps, data=order.state())
        return run.history
