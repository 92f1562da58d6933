"""Splitting one forward/forward_backward call into chunks and merging the results (spec FB-7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ..types import ForwardBackwardOutput, TensorData

__all__ = ["split_chunks", "merge_outputs"]

T = TypeVar("T")
#: the metric suffixes a merge keeps (spec FB-9)
MERGED = frozenset({"sum", "mean", "min", "max"})


def split_chunks(items: Sequence[T], max_chunk: int) -> list[list[T]]:
    """Consecutive chunks of at most ``max_chunk`` items, in order."""
    return [list(items[i : i + max_chunk]) for i in range(0, len(items), max_chunk)]


def merge_outputs(outputs: Sequence[ForwardBackwardOutput], counts: Sequence[int]) -> ForwardBackwardOutput:
    """Concatenate per-datum outputs; merge metrics by their ``:reduction`` suffix.

    ``sum`` adds, ``mean`` takes the datum-count-weighted mean, ``min``/``max`` take the extreme;
    keys missing from any chunk and unknown suffixes are dropped, for one chunk too (so the key set
    does not depend on chunking).
    """
    if len(outputs) == 1:
        only = outputs[0]
        kept = {k: v for k, v in only.metrics.items() if k.partition(":")[2] in MERGED}
        return only if len(kept) == len(only.metrics) else only.model_copy(update={"metrics": kept})
    loss_fn_outputs: list[dict[str, TensorData]] = [o for out in outputs for o in out.loss_fn_outputs]
    metrics: dict[str, float] = {}
    total = float(sum(counts))
    for key in outputs[0].metrics:
        if not all(key in out.metrics for out in outputs):
            continue
        values = [out.metrics[key] for out in outputs]
        reduction = key.partition(":")[2]
        if reduction == "sum":
            metrics[key] = float(sum(values))
        elif reduction == "mean":
            metrics[key] = sum(v * c for v, c in zip(values, counts, strict=True)) / total
        elif reduction == "min":
            metrics[key] = min(values)
        elif reduction == "max":
            metrics[key] = max(values)
    return ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type, loss_fn_outputs=loss_fn_outputs, metrics=metrics
    )
