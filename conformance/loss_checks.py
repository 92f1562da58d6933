"""Shared pieces of the loss and custom-loss conformance tests (spec LOSS, FB-6, FB-10..FB-13).

The loss statement each built-in cites, a trained client, black-box gradient comparison (one
gradient-sized AdamW step, plus ``introspection`` when declared) and datums whose ratios straddle
every default clip bound.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, forward_logprobs, probe_batch, state_arrays
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.strategies import ALL_LOSSES
from tinker_std.conformance.tolerances import assert_close

__all__ = [
    "LOSS_STATEMENT", "LOSSES", "Factory", "trained", "grads", "GRADIENT_STEP", "assert_same_gradient", "scaled",
    "SPEC_DEFAULTS", "PROBE_RATIOS", "ratio_probe",
]  # fmt: skip

LOSS_STATEMENT = {
    "cross_entropy": ("LOSS-2", "LOSS-15"),
    "importance_sampling": ("LOSS-3",),
    "ppo": ("LOSS-4", "LOSS-9"),
    "cispo": ("LOSS-5", "LOSS-9"),
    "dro": ("LOSS-6",),
    "gspo": ("LOSS-7", "LOSS-9"),
}
LOSSES = [
    pytest.param(name, marks=[pytest.mark.requires(f"loss:{name}"), pytest.mark.spec(*LOSS_STATEMENT[name])], id=name)
    for name in ALL_LOSSES
]

Factory = Callable[..., ts.TrainingClient]


def trained(make: Factory, backend: ConformanceBackend) -> ts.TrainingClient:
    """A client one step away from its base model, so adapters are non-trivial."""
    tc = make()
    tc.forward_backward(probe_batch(backend.vocab_size), "cross_entropy")
    tc.optim_step(ADAM).result()
    return tc


def grads(tc: ts.TrainingClient) -> dict[str, np.ndarray]:
    return {k: v for k, v in state_arrays(tc).items() if k.startswith("grads/")}


#: An AdamW step whose update is ``lr·g / (|g| + eps) ≈ g / 100`` element-wise for ``|g| << eps``:
#: with ``eps`` this large the first step is linear in the gradient instead of Adam's scale-free
#: ``sign(g)``, so comparing the weights after it (through ``forward``) compares gradients black-box.
GRADIENT_STEP = ts.AdamParams(learning_rate=10.0, eps=1e3, beta1=0.9, beta2=0.95)


def assert_same_gradient(
    a: ts.TrainingClient, b: ts.TrainingClient, backend: ConformanceBackend, statement: str, what: str
) -> None:
    """``a`` and ``b`` (same weights) hold the same accumulated gradient: compared directly with
    ``introspection``, and black-box through one ``GRADIENT_STEP`` on each."""
    if backend.supports("introspection"):
        ga, gb = grads(a), grads(b)
        scale = max(1.0, *(float(np.abs(g).max()) for g in gb.values()))
        for key in gb:
            assert_close(ga[key], gb[key], "token", statement, what=f"{what}: {key}", slack=1e-6 * scale)
    a.optim_step(GRADIENT_STEP)
    b.optim_step(GRADIENT_STEP)
    probe = probe_batch(backend.vocab_size)
    for i, (x, y) in enumerate(zip(forward_logprobs(a, probe), forward_logprobs(b, probe), strict=True)):
        assert_close(x, y, "token", statement, what=f"{what}: probe {i} after a gradient-sized step")


def scaled(data: list[ts.Datum], scale: float) -> list[ts.Datum]:
    """``data`` with cross-entropy weights multiplied by ``scale`` (ones where absent)."""
    out = []
    for d in data:
        n = d.model_input.length
        w = d.loss_fn_inputs["weights"].to_numpy() if "weights" in d.loss_fn_inputs else np.ones(n, np.float32)
        out.append(
            ts.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, "weights": w * np.float32(scale)})
        )
    return out


#: The config defaults of the table in 03-losses.md, written out here so that the check does not
#: read them from the library under test.
SPEC_DEFAULTS: dict[str, dict[str, float]] = {
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
    "gspo": {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0004},
}

#: Ratios r = exp(lp - q) each loss is probed at: on both sides of every default bound (ppo:
#: 0.8 / 1.2 and the common 0.9 / 1.1; cispo: 0 / 4; dro: large |lp - q|), and for gspo the
#: per-datum sequence ratios around 0.9997 / 1.0004.
PROBE_RATIOS: dict[str, list[float]] = {
    "ppo": [0.75, 0.85, 0.95, 1.05, 1.15, 1.25],
    "cispo": [0.5, 0.9, 1.1, 1.5, 3.0, 5.0],
    "dro": [0.14, 0.5, 0.9, 1.1, 2.0, 7.0],
    "gspo": [0.9995, 0.99985, 1.0001, 1.00035, 1.0005, 1.002],
    "importance_sampling": [0.5, 0.9, 1.0, 1.1, 2.0, 3.0],
}


def ratio_probe(tc: ts.TrainingClient, loss_fn: str, v: int, advantage: float = 2.0) -> list[ts.Datum]:
    """Datums whose ratios ``r`` (gspo: sequence ratios) take the values of ``PROBE_RATIOS``, each
    under a positive and a negative advantage: ``q`` is set from the client's current logprobs."""
    ratios = PROBE_RATIOS[loss_fn]
    n = 2 * len(ratios)
    rows = [[(13 * i + 5 * k + 1) % v for i in range(n + 1)] for k in range(len(ratios) if loss_fn == "gspo" else 1)]
    base = [
        ts.Datum(model_input=ts.ModelInput.from_ints(r[:-1]), loss_fn_inputs={"target_tokens": r[1:]}) for r in rows
    ]
    current = forward_logprobs(tc, base)
    out = []
    for k, (d, lp) in enumerate(zip(base, current, strict=True)):
        r = np.full(n, ratios[k]) if loss_fn == "gspo" else np.array(ratios * 2)
        q = (lp.astype(np.float64) - np.log(r)).astype(np.float32)
        adv = np.array([advantage] * (n // 2) + [-advantage] * (n // 2), np.float32)
        out.append(
            ts.Datum(
                model_input=d.model_input,
                loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"], "logprobs": q, "advantages": adv},
            )
        )
    return out
