"""Direct preference optimisation on ``{"prompt", "chosen", "rejected"}`` JSONL pairs.

For each pair, with ``lp(y)`` the summed logprob of response ``y`` under the policy and
``ref(y)`` under the frozen reference (the base model, or ``init_from`` when training starts from
a checkpoint)::

    margin = beta * ((lp(chosen) - ref(chosen)) - (lp(rejected) - ref(rejected)))
    loss   = mean over pairs of -log sigmoid(margin)

Reference logprobs are computed once, before training: by default with a sampling client's
``compute_logprobs`` on the reference weights, or (``reference="forward"``) with ``forward`` on a
fresh training client, which starts equal to its base model (LORA-2). The loss is not built in,
so it runs through ``forward_backward_custom``: the client evaluates it on the policy's
logprobs and the backend trains on its gradient. ``accuracy`` is the share of pairs with a
positive margin (a tie, ``|margin| <= 1e-6``, counts one half, so the untrained policy scores 0.5); ``loss`` starts at
``ln 2``.

A prompt is a string (raw text; the response follows it directly and ends with EOS) or a list of
chat messages (the response becomes the assistant's reply, rendered by the renderer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tinker_std as ts

from .common import DataOrder, OnStep, Run, RunConfig, load_jsonl
from .renderers import Renderer, datum_from_tokens, get_renderer, render_record

if TYPE_CHECKING:
    import torch

__all__ = ["DPOConfig", "pair_datums", "reference_logprobs", "dpo_loss", "run"]


#: Margins this close to 0 count as ties (half right): the sampler and the trainer may round differently.
TIE = 1e-6


@dataclass(frozen=True)
class DPOConfig(RunConfig):
    data: str = "demo:preferences"
    beta: float = 0.1
    batch_size: int = 8  # pairs per step
    reference: str = "sampler"  # sampler: compute_logprobs; forward: forward on a fresh training client
    renderer: str = "auto"


def _response_record(prompt: Any, response: str) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prompt": prompt, "completion": response}
    return {"messages": [*prompt, {"role": "assistant", "content": response}]}


def pair_datums(renderer: Renderer, record: Mapping[str, Any]) -> tuple[ts.Datum, ts.Datum]:
    """Datums of the chosen and the rejected response; ``weights`` mark the response tokens."""
    chosen = render_record(renderer, _response_record(record["prompt"], record["chosen"]))
    rejected = render_record(renderer, _response_record(record["prompt"], record["rejected"]))
    return datum_from_tokens(*chosen), datum_from_tokens(*rejected)


def _masked_sum(values: Sequence[float | None], mask: Sequence[float]) -> float:
    return sum(float(v) for v, m in zip(values, mask, strict=True) if m != 0 and v is not None)


def reference_logprobs(
    run: Run, datums: Sequence[ts.Datum], how: str = "sampler", init_from: str | None = None
) -> list[float]:
    """Summed reference logprob of each datum's weighted (response) tokens."""
    masks = [d.loss_fn_inputs["weights"].tolist() for d in datums]
    if how == "sampler":
        if init_from:
            sampler = run.service.create_sampling_client(model_path=init_from).result()
        else:
            sampler = run.service.create_sampling_client(base_model=run.base_model).result()
        futures = [
            sampler.compute_logprobs(
                ts.ModelInput.from_ints([*d.model_input.to_ints(), d.loss_fn_inputs["target_tokens"].tolist()[-1]])
            )
            for d in datums
        ]
        return [_masked_sum(f.result()[1:], m) for f, m in zip(futures, masks, strict=True)]
    if how == "forward":
        if init_from:
            fresh = run.service.create_training_client_from_state(init_from).result()
        else:
            fresh = run.service.create_lora_training_client(base_model=run.base_model, rank=run.rank).result()
        out = fresh.forward(list(datums), "cross_entropy").result()
        return [_masked_sum(o["logprobs"].tolist(), m) for o, m in zip(out.loss_fn_outputs, masks, strict=True)]
    raise ValueError(f"unknown reference {how!r}; use sampler or forward")


def dpo_loss(
    logprobs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], ref: Sequence[float], beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO over datums ordered ``chosen_0, rejected_0, chosen_1, ...``; returns (mean loss, metrics)."""
    import torch

    sums = torch.stack([(lp.double() * m.double()).sum() for lp, m in zip(logprobs, masks, strict=True)])
    rewards = beta * (sums - torch.tensor(ref, dtype=torch.float64))
    margin = rewards[0::2] - rewards[1::2]
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    m = margin.detach()
    metrics = {
        "accuracy:mean": float(torch.where(m.abs() <= TIE, 0.5, (m > 0).double()).mean()),
        "margin:mean": float(m.mean()),
        "chosen_reward:mean": float(rewards.detach()[0::2].mean()),
        "rejected_reward:mean": float(rewards.detach()[1::2].mean()),
    }
    return loss, metrics


def run(
    config: DPOConfig, pairs: Sequence[Mapping[str, Any]] | None = None, on_step: OnStep | None = None
) -> list[dict[str, Any]]:
    """Train for ``config.steps`` DPO steps; returns one metrics dict per step run."""
    with Run(config, "dpo", show=("loss", "accuracy")) as run:
        training = run.training
        renderer = get_renderer(training.get_tokenizer(), config.renderer)
        records = list(pairs) if pairs is not None else load_jsonl(config.data)
        datums = [d for record in records for d in pair_datums(renderer, record)]
        ref = reference_logprobs(run, datums, config.reference, config.init_from)
        order = DataOrder(len(records), min(config.batch_size, len(records)), run.rng, run.state.get("data"))
        for step in range(run.start_step, config.steps):
            if run.checkpoint_due(step):
                run.save(step, data=order.state())
            pick = [j for i in order.next_batch() for j in (2 * i, 2 * i + 1)]
            batch, batch_ref = [datums[j] for j in pick], [ref[j] for j in pick]

            def loss_fn(
                data: list[ts.Datum], logprobs: list[torch.Tensor], batch_ref: list[float] = batch_ref
            ) -> tuple[torch.Tensor, dict[str, float]]:
                masks = [d.loss_fn_inputs["weights"].to_torch() for d in data]
                return dpo_loss(logprobs, masks, batch_ref, config.beta)

            fb = training.forward_backward_custom(batch, loss_fn)
            opt = training.optim_step(run.adam(step))
            out = fb.result()
            opt.result()
            metrics = {"step": step, "lr": run.lr(step), "loss": out.metrics["loss:sum"]}
            metrics.update({k.split(":")[0]: v for k, v in out.metrics.items() if k.endswith(":mean")})
            run.log(metrics, on_step)
        if run.checkpoint_due(config.steps):
            run.save(config.steps, data=order.state())
        return run.history
