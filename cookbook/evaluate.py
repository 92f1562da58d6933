"""Evaluation: NLL on a held-out set and task accuracy by sampling.

* ``token_nll(datums, output)``: mean NLL per weighted token from a ``forward`` (or
  ``forward_backward``) output; what SFT logs as ``train_nll`` / ``eval_nll``.
* ``sampler_nll(sampler, examples)``: the same number from a ``SamplingClient`` via
  ``compute_logprobs``, so a checkpoint or the base model is scored without a training client.
* ``accuracy(sampler, renderer, records)``: greedy answers (temperature 0) compared with the
  expected answer: the first line of the reply, stripped, must equal it.

``run(EvalConfig(...))`` scores the base model or a checkpoint (``model_path``) on a JSONL of
chat or prompt/completion records and returns one row of metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tinker_std as ts

from .common import OnStep, Run, RunConfig, load_jsonl
from .renderers import Renderer, get_renderer, prompt_of_record, render_record

__all__ = ["EvalConfig", "token_nll", "sampler_nll", "accuracy", "answers_match", "run"]


@dataclass(frozen=True)
class EvalConfig(RunConfig):
    data: str = "demo:arithmetic"
    model_path: str | None = None  # tinker:// checkpoint to evaluate; None: the base model
    renderer: str = "auto"
    max_tokens: int = 16
    limit: int | None = None  # evaluate the first N records only


def token_nll(datums: Sequence[ts.Datum], output: ts.ForwardBackwardOutput) -> float:
    """Mean of ``-logprob`` over the positions whose weight is non-zero."""
    total, count = 0.0, 0
    for datum, out in zip(datums, output.loss_fn_outputs, strict=True):
        weights = datum.loss_fn_inputs["weights"].tolist()
        for lp, w in zip(out["logprobs"].tolist(), weights, strict=True):
            if w != 0:
                total -= lp
                count += 1
    return total / max(count, 1)


def sampler_nll(sampler: ts.SamplingClient, examples: Sequence[tuple[list[int], list[float]]]) -> float:
    """Mean NLL per weighted token of ``(tokens, weights)`` examples, via ``compute_logprobs``."""
    futures = [sampler.compute_logprobs(ts.ModelInput.from_ints(tokens)) for tokens, _ in examples]
    total, count = 0.0, 0
    for (_, weights), future in zip(examples, futures, strict=True):
        for lp, w in zip(future.result()[1:], weights[1:], strict=True):
            if w != 0 and lp is not None:
                total -= lp
                count += 1
    return total / max(count, 1)


def answers_match(response: str, expected: str) -> bool:
    """The reply's first non-empty line equals the expected answer (both stripped)."""
    lines = [line.strip() for line in response.strip().splitlines() if line.strip()]
    return bool(lines) and lines[0] == expected.strip()


def accuracy(
    sampler: ts.SamplingClient, renderer: Renderer, records: Sequence[Mapping[str, Any]], max_tokens: int = 16
) -> float:
    """Fraction of records whose greedy answer matches the expected one."""
    futures = []
    expected = []
    for record in records:
        prompt, answer, stop = prompt_of_record(renderer, record)
        params = ts.SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
        futures.append(sampler.sample(ts.ModelInput.from_ints(prompt), 1, params))
        expected.append(answer)
    hits = [
        answers_match(renderer.parse_response(f.result().sequences[0].tokens), answer)
        for f, answer in zip(futures, expected, strict=True)
    ]
    return sum(hits) / max(len(hits), 1)


def run(config: EvalConfig, on_step: OnStep | None = None) -> list[dict[str, Any]]:
    """Score the base model or ``config.model_path`` on ``config.data``: one row of metrics."""
    with Run(config, "eval", training=False, show=("nll", "accuracy")) as run:
        if config.model_path:
            sampler = run.service.create_sampling_client(model_path=config.model_path).result()
        else:
            sampler = run.service.create_sampling_client(base_model=run.base_model).result()
        renderer = get_renderer(sampler.get_tokenizer(), config.renderer)
        records = load_jsonl(config.data)[: config.limit]
        examples = [render_record(renderer, record) for record in records]
        metrics = {
            "step": 0,
            "nll": sampler_nll(sampler, examples),
            "accuracy": accuracy(sampler, renderer, records, config.max_tokens),
            "num_examples": len(records),
        }
        run.log(metrics, on_step)
        return run.history
