"""The client layer's merge of chunked results (``tinker_std.client.chunking``, spec FB-9)."""

from __future__ import annotations

import numpy as np
import pytest

from tinker_std.client.chunking import merge_outputs, split_chunks
from tinker_std.types import ForwardBackwardOutput, TensorData


def output(logprobs: list[list[float]], metrics: dict[str, float]) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_outputs=[{"logprobs": TensorData.from_numpy(np.asarray(row, dtype=np.float32))} for row in logprobs],
        metrics=metrics,
    )


def test_split_chunks_keeps_order_and_bounds() -> None:
    assert split_chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_metrics_merge_by_suffix_weighted_by_datum_count() -> None:
    first = output([[-1.0], [-2.0]], {"loss:sum": 3.0, "acc:mean": 0.5, "lo:min": -2.0, "hi:max": 1.0})
    second = output([[-4.0]], {"loss:sum": 4.0, "acc:mean": 1.0, "lo:min": -4.0, "hi:max": 0.5})
    merged = merge_outputs([first, second], [2, 1])
    assert merged.metrics == pytest.approx({"loss:sum": 7.0, "acc:mean": 2.0 / 3.0, "lo:min": -4.0, "hi:max": 1.0})
    assert [o["logprobs"].tolist() for o in merged.loss_fn_outputs] == [[-1.0], [-2.0], [-4.0]]


def test_the_key_set_does_not_depend_on_chunking() -> None:
    """FB-9: unknown suffixes are dropped for one chunk as for several."""
    metrics = {"loss:sum": 1.0, "tokens:count": 2.0}
    whole = merge_outputs([output([[-1.0], [-1.0]], metrics)], [2])
    split = merge_outputs([output([[-1.0]], metrics), output([[-1.0]], metrics)], [1, 1])
    assert set(whole.metrics) == set(split.metrics) == {"loss:sum"}
    assert whole.metrics["loss:sum"] == 1.0 and split.metrics["loss:sum"] == 2.0
