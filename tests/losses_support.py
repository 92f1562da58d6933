"""Shared setup of the built-in loss tests (``tests/test_losses.py``, ``tests/test_losses_examples.py``): the
tolerances, and running ``tinker_std.losses`` on numpy data for its value and per-datum gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tinker_std.losses import compute_loss

Datum = dict[str, Any]  # "lp" plus numpy inputs keyed like loss_fn_inputs

# Both sides compute in float64 from identical inputs; they differ only in summation order
# (a few ulps per term), so 1e-12 relative is ~4 orders of magnitude above the expected error.
VALUE_RTOL = 1e-12
# Gradients are elementwise products of O(1) numbers computed the same way on both sides; the
# absolute floor covers entries where terms cancel (e.g. DRO's A - beta*(lp - q)) near zero.
GRAD_RTOL = 1e-12
GRAD_ATOL = 1e-13
# Central differences with step h: truncation O(h^2) ~ 1e-12, rounding ~ eps*|f|/h ~ 1e-9 for
# |f| <= 100, so 1e-6 separates a right gradient from a wrong one (errors are O(0.01) or more).
FD_STEP = 1e-6
FD_ATOL = 1e-6

# --------------------------------------------------------------------------------------------
# running the library
# --------------------------------------------------------------------------------------------

INPUT_KEYS = (
    "weights",
    "logprobs",
    "advantages",
    "clip_low_threshold",
    "clip_high_threshold",
    "sequence_ratio_mask",
    "sampled_mask",
)


def torch_inputs(d: Datum) -> dict[str, torch.Tensor]:
    n = d["lp"].shape
    inputs = {"target_tokens": torch.zeros(n, dtype=torch.int64)}
    for key in INPUT_KEYS:
        if key in d:
            inputs[key] = torch.tensor(d[key], dtype=torch.float64)
    return inputs


def run(loss: str, batch: list[Datum], config: Mapping[str, Any] | None) -> tuple[float, list[np.ndarray]]:
    lps = [torch.tensor(d["lp"], dtype=torch.float64, requires_grad=True) for d in batch]
    value = compute_loss(loss, lps, [torch_inputs(d) for d in batch], config)
    value.backward()
    grads = [lp.grad.numpy() if lp.grad is not None else np.zeros(lp.shape) for lp in lps]
    return float(value.detach()), grads


def value_only(loss: str, batch: list[Datum], config: Mapping[str, Any] | None) -> float:
    with torch.no_grad():
        lps = [torch.tensor(d["lp"], dtype=torch.float64) for d in batch]
        return float(compute_loss(loss, lps, [torch_inputs(d) for d in batch], config))


def assert_value(actual: float, expected: float, scale: float) -> None:
    # relative to the sum of |terms| so that a sum that cancels to ~0 is still judged fairly
    assert abs(actual - expected) <= VALUE_RTOL * max(scale, abs(expected), 1e-300), (actual, expected)


def assert_grads(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=GRAD_RTOL, atol=GRAD_ATOL)
