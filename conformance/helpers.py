"""Small helpers shared by the conformance tests; public API of tinker_std only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import tinker_std as ts

from .tolerances import assert_mapping_close, assert_replay

__all__ = [
    "fill_file_system",
    "ADAM",
    "sequence_datum",
    "rl_datum",
    "probe_batch",
    "two_batches",
    "with_rl_inputs",
    "logprobs_of",
    "forward_logprobs",
    "state_arrays",
    "snapshot",
    "assert_snapshot_unchanged",
    "assert_outputs_replay",
    "metric_keys_ok",
    "next_token_distribution",
]

Array = npt.NDArray[Any]

#: A step that visibly moves a LoRA adapter; every field explicit, so a server whose defaults
#: differ fails only the test of the defaults (issue 19, deliverable 5).
ADAM = ts.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.95, eps=1e-12, weight_decay=0.0, grad_clip_norm=0.0)


def sequence_datum(
    tokens: Sequence[int], weights: Sequence[float] | None = None, *, explicit: bool = False
) -> ts.Datum:
    """A cross-entropy datum over ``tokens`` shifted by one (ALN-1). Without ``weights`` none are
    sent (the default, ones, applies) unless ``explicit``, which sends the ones: tests that do not
    check the default send them, so a server that requires ``weights`` fails only that default's
    test (issue 19, deliverable 5)."""
    inputs: dict[str, Any] = {"target_tokens": [int(t) for t in tokens[1:]]}
    if weights is not None or explicit:
        inputs["weights"] = [float(w) for w in weights] if weights is not None else [1.0] * (len(tokens) - 1)
    return ts.Datum(model_input=ts.ModelInput.from_ints([int(t) for t in tokens[:-1]]), loss_fn_inputs=inputs)


def rl_datum(tokens: Sequence[int], advantages: Sequence[float], logprobs: Sequence[float]) -> ts.Datum:
    return ts.Datum(
        model_input=ts.ModelInput.from_ints([int(t) for t in tokens[:-1]]),
        loss_fn_inputs={
            "target_tokens": [int(t) for t in tokens[1:]],
            "advantages": [float(a) for a in advantages],
            "logprobs": [float(q) for q in logprobs],
        },
    )


def probe_batch(vocab_size: int, explicit: bool = False) -> list[ts.Datum]:
    """A fixed batch used to observe a client's weights through ``forward`` (``weights`` sent as
    ones when ``explicit``, see ``sequence_datum``)."""
    v = vocab_size
    seqs = [
        [1 % v, 7 % v, 42 % v, 99 % v, 3 % v, 64 % v, 17 % v],
        [(v - 1) % v, 5 % v, 5 % v, 12 % v],
        [200 % v, 31 % v, 8 % v, 150 % v, 77 % v, 2 % v],
    ]
    return [sequence_datum(s, explicit=explicit) for s in seqs]


def two_batches(vocab_size: int) -> tuple[list[ts.Datum], list[ts.Datum]]:
    """Two small cross-entropy batches (the second with uneven real weights) for training tests."""
    v = vocab_size
    a = [sequence_datum([(7 * i + 3) % v for i in range(9)]), sequence_datum([(5 * i + 1) % v for i in range(6)])]
    b = [sequence_datum([(11 * i + 2) % v for i in range(7)], [1.0, -0.5, 2.0, 0.0, 1.0, 1.0])]
    return a, b


def with_rl_inputs(d: ts.Datum) -> ts.Datum:
    """``d`` with decreasing advantages and sampling logprobs of -3, for the policy losses."""
    n = d.model_input.length
    return ts.Datum(
        model_input=d.model_input,
        loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "advantages": [1.0 - 0.3 * i for i in range(n)],
            "logprobs": [-3.0] * n,
        },
    )


def logprobs_of(out: ts.ForwardBackwardOutput) -> list[Array]:
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def forward_logprobs(tc: ts.TrainingClient, data: list[ts.Datum]) -> list[Array]:
    return logprobs_of(tc.forward(data, "cross_entropy").result())


def state_arrays(tc: ts.TrainingClient) -> dict[str, Array]:
    """Introspected weights, gradients and optimizer state flattened into one dict."""
    state = tc.read_state().result()
    out: dict[str, Array] = {}
    for kind in ("weights", "grads", "exp_avg", "exp_avg_sq"):
        for name, value in getattr(state, kind).items():
            out[f"{kind}/{name}"] = np.array(value)
    out["step"] = np.array(state.step)
    return out


def snapshot(tc: ts.TrainingClient, probe: list[ts.Datum], introspection: bool) -> dict[str, Array]:
    """What can be observed of a client: forward logprobs on ``probe`` and, with introspection,
    its full state. Taking it changes nothing (FB-1)."""
    out = {f"forward/{i}": lp for i, lp in enumerate(forward_logprobs(tc, probe))}
    if introspection:
        out.update(state_arrays(tc))
    return out


def assert_snapshot_unchanged(before: dict[str, Array], after: dict[str, Array], statement: str, what: str) -> None:
    """Two snapshots of the same state are replays: bit-identical on mock/deterministic backends."""
    assert_mapping_close(after, before, "token", statement, what=what, replay=True)


def assert_outputs_replay(
    actual: ts.ForwardBackwardOutput, expected: ts.ForwardBackwardOutput, statement: str, what: str = ""
) -> None:
    got, want = logprobs_of(actual), logprobs_of(expected)
    assert len(got) == len(want), f"[{statement}] {what}: {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_replay(g, w, "token", statement, what=f"{what} logprobs of datum {i}")
    assert_replay(actual.metrics["loss:sum"], expected.metrics["loss:sum"], "sum", statement, what=f"{what} loss:sum")


def metric_keys_ok(metrics: dict[str, float]) -> list[str]:
    """The keys breaking FB-7's ``name:reduction`` grammar."""
    return [k for k in metrics if k.count(":") != 1 or not all(k.split(":"))]


def next_token_distribution(
    sampler: ts.SamplingClient, prefix: list[int], vocab_size: int, capabilities: ts.Capabilities, k: int = 2
) -> list[tuple[int, float]] | None:
    """The ``k`` most likely next tokens after ``prefix`` with their logprobs, sorted by logprob
    descending then id; ``None`` when the backend offers no way to see them (no
    ``topk_prompt_logprobs`` and a vocabulary too large to score token by token)."""
    if capabilities.supports("topk_prompt_logprobs"):
        prompt = ts.ModelInput.from_ints([*prefix, 0])
        response = sampler.sample(prompt, 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=k).result()
        rows = response.topk_prompt_logprobs
        assert rows is not None
        row = rows[len(prefix)]
        assert row is not None
        return [(int(t), float(lp)) for t, lp in row]
    if vocab_size > 4096:
        return None
    scores = []
    for token in range(vocab_size):
        lps = sampler.compute_logprobs(ts.ModelInput.from_ints([*prefix, token])).result()
        value = lps[-1]
        assert value is not None
        scores.append((token, float(value)))
    scores.sort(key=lambda pair: (-pair[1], pair[0]))
    return scores[:k]


def fill_file_system(directory: Path) -> Path:
    """Write zeros to ``directory/filler`` until the file system holds no more (ENOSPC); the
    filler's path, for the caller to remove. For the full-disk checks (CKPT-15) on a small tmpfs."""
    filler_path = directory / "filler"
    with open(filler_path, "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    return filler_path
