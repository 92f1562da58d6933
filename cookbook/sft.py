"""Supervised fine-tuning: JSONL of chat or prompt/completion examples -> LoRA.

The loop, written only against the public tinker-std API so it runs unchanged on any backend::

    datums = [datum_from_tokens(*render(example))]         # ALN shift, prompt tokens weighted 0
    for step in range(steps):
        batch = next batch of a shuffled epoch
        fb  = training.forward_backward(batch, "cross_entropy")
        opt = training.optim_step(AdamParams(learning_rate=lr_at(step)))   # client-side schedule
        ... read step-1's results here: step's requests are already queued (pipelining) ...

Each example's weights sum to 1 (``reduction="mean"``), so ``loss:sum`` is the sum over examples of
their mean token NLL. Every ``eval_every`` steps a ``forward`` on the held-out split, queued before
that step's update, gives ``eval_nll`` (mean NLL per completion token).

``run_sft``/``build_datum``/``DEMO_EXAMPLES`` are the minimal demo behind ``tinker-std demo``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import tinker_std as ts

from .common import DataOrder, OnStep, Run, RunConfig, load_jsonl
from .evaluate import token_nll
from .renderers import Reduction, datum_from_tokens, get_renderer, normalize_weights, render_record

__all__ = ["SFTConfig", "DEMO_EXAMPLES", "build_datum", "build_datums", "split_held_out", "run", "run_sft"]

DEMO_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Q: What is the capital of France?\nA:", " Paris."),
    ("Q: What colour is the sky?\nA:", " Blue."),
    ("Q: How many legs does a cat have?\nA:", " Four."),
    ("Q: What is 2 + 2?\nA:", " 4."),
)


@dataclass(frozen=True)
class SFTConfig(RunConfig):
    steps: int = 50
    data: str = "demo:chat"  # JSONL path, or demo:NAME
    batch_size: int = 8
    renderer: str = "auto"  # auto | plain | chat_template
    reduction: Reduction = "mean"  # mean: each example's weights sum to 1; none: plain token sum
    max_length: int | None = None  # truncate examples to this many tokens
    eval_fraction: float = 0.1  # share of examples held out for eval_nll
    eval_every: int = 5

    READ_WHEN: ClassVar[Mapping[str, tuple[str, Callable[[Any], bool]]]] = {
        "eval_every": ("--eval-fraction above 0", lambda c: c.eval_fraction > 0),
    }


def build_datum(tokenizer: ts.Tokenizer, prompt: str, completion: str) -> ts.Datum:
    """Tokens ``prompt + completion + eos``, shifted by one (ALN-1); only completion tokens are weighted."""
    renderer = get_renderer(tokenizer, "plain")
    tokens, weights = render_record(renderer, {"prompt": prompt, "completion": completion})
    return datum_from_tokens(tokens, normalize_weights(weights, "mean"))


def build_datums(
    renderer: Any, records: Sequence[Mapping[str, Any]], reduction: Reduction = "mean", max_length: int | None = None
) -> list[ts.Datum]:
    """One datum per record; records with no weighted token left after truncation are dropped."""
    datums = []
    for record in records:
        tokens, weights = render_record(renderer, record)
        tokens, weights = tokens[:max_length], weights[:max_length]
        if len(tokens) >= 2 and any(weights[1:]):
            datums.append(datum_from_tokens(tokens, normalize_weights(weights, reduction)))
    return datums


def split_held_out(records: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A fixed ``(train, held_out)`` split: ``fraction`` of the records (at least one if > 0)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if fraction <= 0 else max(1, round(fraction * len(records)))
    n_eval = min(n_eval, len(records) - 1)
    held = sorted(order[:n_eval])
    return [records[i] for i in sorted(order[n_eval:])], [records[i] for i in held]


def run(
    config: SFTConfig, examples: Sequence[Mapping[str, Any]] | None = None, on_step: OnStep | None = None
) -> list[dict[str, Any]]:
    """Train for ``config.steps`` steps; returns one metrics dict per step run."""
    with Run(config, "sft", show=("train_nll", "eval_nll")) as run:
        training = run.training
        renderer = get_renderer(training.get_tokenizer(), config.renderer)
        records = list(examples) if examples is not None else load_jsonl(config.data)
        train_records, held_out = split_held_out(records, config.eval_fraction, run.seed)
        train = build_datums(renderer, train_records, config.reduction, config.max_length)
        evals = build_datums(renderer, held_out, config.reduction, config.max_length)
        order = DataOrder(len(train), min(config.batch_size, len(train)), run.rng, run.state.get("data"))

        pending: Callable[[], dict[str, Any]] | None = None
        for step in range(run.start_step, config.steps):
            if run.checkpoint_due(step):
                if pending is not None:
                    run.log(pending(), on_step)
                    pending = None
                run.save(step, data=order.state())
            batch = [train[i] for i in order.next_batch()]
            lr = run.lr(step)
            evaluating = bool(evals) and (step % config.eval_every == 0 or step == config.steps - 1)
            ev = training.forward(evals, "cross_entropy") if evaluating else None  # weights before this step
            fb = training.forward_backward(batch, "cross_entropy")
            opt = training.optim_step(ts.AdamParams(learning_rate=lr))
            # Pipelining: step's requests are queued; only now wait for the previous step's results.
            if pending is not None:
                run.log(pending(), on_step)

            def finish(
                step: int = step,
                lr: float = lr,
                batch: list[ts.Datum] = batch,
                fb: Any = fb,
                opt: Any = opt,
                ev: Any = ev,
            ) -> dict[str, Any]:
                out = fb.result()
                opt.result()
                metrics = {
                    "step": step,
                    "lr": lr,
                    "train_loss": out.metrics["loss:sum"],
                    "train_nll": token_nll(batch, out),
                }
                if ev is not None:
                    metrics["eval_nll"] = token_nll(evals, ev.result())
                return metrics

            pending = finish
        if pending is not None:
            run.log(pending(), on_step)
        if run.checkpoint_due(config.steps):
            run.save(config.steps, data=order.state())
        return run.history


def run_sft(
    config: SFTConfig,
    examples: Sequence[tuple[str, str]] = DEMO_EXAMPLES,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """The demo: full-batch steps on ``(prompt, completion)`` pairs; returns ``loss:sum`` per step."""
    records = [{"prompt": prompt, "completion": completion} for prompt, completion in examples]
    config = dataclasses.replace(config, batch_size=len(records), eval_fraction=0.0, renderer="plain")

    def report(metrics: dict[str, Any]) -> None:
        if on_step is not None:
            on_step(int(metrics["step"]), float(metrics["train_loss"]))

    return [float(m["train_loss"]) for m in run(config, records, on_step=report)]
