"""``MultiTenant``: several clients' ``forward_backward`` requests as one pass over a shared base model.

``TorchEngine.forward_backward_many`` hands its queued jobs here. Consecutive jobs of different
training models on the same base form a group that may run as ONE forward and backward pass, each
client's rows going through its own adapter (``fast/per_row.py``); ``batching.PathChooser`` decides
per group whether that or one pass per job is faster. Results are those of ``forward_backward``
called on each job in order, bit for bit where the products are packed
(spec/notes/multi-tenant-batching.md): each job's rows keep the layout and shapes of its own pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from tinker_std.losses import compute_loss, gradient_positions
from tinker_std.training_math import datum_inputs, forward_backward_output
from tinker_std.types import ForwardBackwardOutput

from .batching import PathChooser
from .engine_protocol import ForwardBackwardJob
from .fast import per_row, prefix_layout
from .fast.row_segments import Segment
from .forward_pass import ForwardPass
from .holdings import TrainingModel

__all__ = ["MultiTenant"]

Outcome = ForwardBackwardOutput | Exception


class MultiTenant:
    """Runs jobs grouped by base model. ``models``: the engine's training models by id (read, not
    changed); ``resident``: a model by id with its state back in memory (``TorchEngine._model``,
    raising for unknown ids); ``one_job``: the single-client ``forward_backward`` of a job."""

    def __init__(
        self,
        passes: ForwardPass,
        chooser: PathChooser,
        models: Mapping[str, TrainingModel],
        resident: Callable[[str], TrainingModel],
        one_job: Callable[[ForwardBackwardJob], ForwardBackwardOutput],
    ) -> None:
        self.passes = passes
        self.chooser = chooser
        self.models = models
        self.resident = resident
        self.one_job = one_job

    def run(self, jobs: Sequence[ForwardBackwardJob]) -> list[Outcome]:
        """Each job's output or the error it alone raised, in order (a bad request never affects
        the other jobs)."""
        results: list[Outcome | None] = [None] * len(jobs)
        groups: list[list[int]] = []
        layouts: dict[int, prefix_layout.RowLayout] = {}  # each job's own layout, made once
        for i, job in enumerate(jobs):
            try:
                model = self.resident(job.model_id)
                self.passes.check_lengths(model.spec, job.data)
            except Exception as exc:  # reported in this job's slot
                results[i] = exc
                continue
            if groups and self.joins(jobs, groups[-1], i, layouts):
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            outputs = self._run_group([jobs[i] for i in group], [layouts.get(i) for i in group])
            for i, result in zip(group, outputs, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def joins(
        self, jobs: Sequence[ForwardBackwardJob], group: list[int], i: int, layouts: dict[int, prefix_layout.RowLayout]
    ) -> bool:
        """Whether job ``i`` may share one pass with ``group``: another training model on the same
        base, and the stacked batch (each job's own layout, padded to the widest) stays within the
        token and logit budgets. Fills ``layouts`` for the jobs it looks at."""
        if jobs[i].datum_loss is not None or jobs[group[0]].datum_loss is not None:
            return False  # a per-datum custom loss runs in its own pass (CLG-4)
        model = self.models[jobs[i].model_id]
        members = [self.models[jobs[j].model_id] for j in group]
        if model.base is not members[0].base or any(m is model for m in members):
            return False
        for j in [*group, i]:
            if j not in layouts:
                layouts[j] = self.passes.layout(model.base, jobs[j].data)
        blocks = [layouts[j].input_ids.shape for j in [*group, i]]
        padded = sum(rows for rows, _ in blocks) * max(width for _, width in blocks)
        return padded <= self.passes.token_budget(model.base.vocab_size)

    def _run_group(
        self, group: Sequence[ForwardBackwardJob], layouts: Sequence[prefix_layout.RowLayout | None]
    ) -> list[Outcome]:
        data = [d for job in group for d in job.data]
        tokens = sum(d.model_input.length for d in data)
        padded = len(data) * max(d.model_input.length for d in data)
        path = self.chooser.choose(len(group), padded)
        start = time.perf_counter()
        if path == "batched":
            try:
                batched = self._batched(
                    group,
                    [
                        self.passes.layout(self.models[job.model_id].base, job.data) if layout is None else layout
                        for job, layout in zip(group, layouts, strict=True)
                    ],
                )
            except Exception:  # e.g. a loss that rejects its inputs: one at a time names the culprit
                path = "serial"
            else:
                self.chooser.record(len(group), padded, path, (time.perf_counter() - start) / tokens)
                return list(batched)
        outputs: list[Outcome] = []
        for job in group:
            try:
                outputs.append(self.one_job(job))
            except Exception as exc:  # reported in this job's slot
                outputs.append(exc)
        self.chooser.record(len(group), padded, "serial", (time.perf_counter() - start) / tokens)
        return outputs

    def _batched(
        self, group: Sequence[ForwardBackwardJob], layouts: Sequence[prefix_layout.RowLayout]
    ) -> list[ForwardBackwardOutput]:
        """One forward (and backward) pass over the rows of every job (``layouts``: each job's own,
        ``ForwardPass.layout``), each job's rows through its own adapter. Rows are independent, so
        each job's logprobs, loss and gradient are those of its own pass. On failure every
        adapter's accumulated gradient is restored."""
        models = [self.models[job.model_id] for job in group]
        base = models[0].base
        data = [d for job in group for d in job.data]
        settings = self.passes.settings
        # each job's rows laid out as its own pass lays them out (``layouts``: same shapes, same bits)
        layout, ranges = prefix_layout.stack(layouts)
        segments: list[Segment] = [
            (start, stop, model.adapter, width) for (start, stop, width), model in zip(ranges, models, strict=True)
        ]
        bounds: list[tuple[int, int]] = []
        for job in group:
            first = bounds[-1][1] if bounds else 0
            bounds.append((first, first + len(job.data)))
        training = [m for job, m in zip(group, models, strict=True) if job.backward]
        saved = [{n: None if p.grad is None else p.grad.clone() for n, p in m.params.items()} for m in training]
        try:
            with (
                torch.set_grad_enabled(bool(training)),
                per_row.per_row_adapters(
                    base.model,
                    segments,
                    [m.params for m in training],
                    fused=settings.fused_lora,
                    packing=settings.packed_weights,
                ),
            ):
                datum_adapters = [m.adapter for job, m in zip(group, models, strict=True) for _ in job.data]
                inputs = [[datum_inputs(d) for d in job.data] for job in group]
                hints = [
                    gradient_positions(job.loss_fn, one) for job, ins in zip(group, inputs, strict=True) for one in ins
                ]
                logprobs = self.passes.logprobs(base, data, layout, datum_adapters, hints)
                losses = [
                    compute_loss(job.loss_fn, logprobs[start:stop], ins, job.loss_fn_config)
                    for job, ins, (start, stop) in zip(group, inputs, bounds, strict=True)
                ]
                to_backward = [
                    loss for job, loss in zip(group, losses, strict=True) if job.backward and loss.requires_grad
                ]
                if to_backward:
                    torch.stack(to_backward).sum().backward()  # type: ignore[no-untyped-call]
        except BaseException:
            for model, grads in zip(training, saved, strict=True):
                for name, p in model.params.items():
                    p.grad = grads[name]
            raise
        return [
            forward_backward_output(logprobs[start:stop], loss)
            for (start, stop), loss in zip(bounds, losses, strict=True)
        ]
