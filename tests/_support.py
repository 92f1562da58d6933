"""Helpers shared by the client-level tests (imported as a plain module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import tinker_std as ts
from tinker_std.backend import SampleRequest

MODEL = "mock/tiny"


def make_service(tmp_path: Path, **options: object) -> ts.ServiceClient:
    return ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "ckpt"), **options)  # type: ignore[arg-type]


def sequence_datum(tokens: Sequence[int], weights: Sequence[float] | None = None) -> ts.Datum:
    """A cross-entropy datum over ``tokens`` shifted by one (ALN-1)."""
    inputs: dict[str, object] = {"target_tokens": list(tokens[1:])}
    if weights is not None:
        inputs["weights"] = list(weights)
    return ts.Datum(model_input=ts.ModelInput.from_ints(list(tokens[:-1])), loss_fn_inputs=inputs)  # type: ignore[arg-type]


def sample_request(
    prompt: Sequence[int], n: int = 1, topk: int = 0, include: bool = False, **params: Any
) -> SampleRequest:
    """A backend-level ``SampleRequest`` (``params`` are ``SamplingParams`` fields)."""
    return SampleRequest(
        prompt=list(prompt),
        num_samples=n,
        sampling_params=ts.SamplingParams(**params),
        include_prompt_logprobs=include,
        topk_prompt_logprobs=topk,
    )


def text_batch(texts: Sequence[str]) -> list[ts.Datum]:
    return [sequence_datum(list(t.encode())) for t in texts]


def rl_datum(tokens: Sequence[int], advantages: Sequence[float], logprobs: Sequence[float]) -> ts.Datum:
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={"target_tokens": list(tokens[1:]), "advantages": list(advantages), "logprobs": list(logprobs)},
    )


def state_arrays(tc: ts.TrainingClient) -> dict[str, np.ndarray]:
    """Weights, gradients and optimizer state flattened into one dict (for bit-exact comparisons)."""
    state = tc.read_state().result()
    out: dict[str, np.ndarray] = {}
    for kind in ("weights", "grads", "exp_avg", "exp_avg_sq"):
        for name, value in getattr(state, kind).items():
            out[f"{kind}/{name}"] = np.array(value)
    out["step"] = np.array(state.step)
    return out


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def logprobs_of(out: ts.ForwardBackwardOutput) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


#: Every built-in loss that consumes logprobs, with the config the training-path tests use.
LOSS_CONFIGS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {},
    "cispo": {},
    "dro": {"beta": 0.1},
    "gspo": {},
}


def engine_pass(
    engine: Any, model_id: str, data: list[ts.Datum], loss: str, switches: dict[str, bool]
) -> tuple[list[np.ndarray], float, dict[str, np.ndarray]]:
    """One ``forward_backward`` of a ``TorchEngine`` with the fast-path ``switches`` (fields of its
    ``TorchSettings``) set for that call: the datums' logprobs, the loss and the accumulated
    gradients; the gradient is then cleared (an ``optim_step`` with learning rate 0, so the weights
    do not move)."""
    before = engine.settings
    engine.settings = dataclasses.replace(before, **switches)
    try:
        out = engine.forward_backward(model_id, data, loss, LOSS_CONFIGS[loss], True)
    finally:
        engine.settings = before
    grads = {k: v.copy() for k, v in engine.read_state(model_id).grads.items()}
    engine.optim_step(model_id, ts.AdamParams(learning_rate=0.0))
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs], out.metrics["loss:sum"], grads


def sample_one(engine: Any, sampler_id: str, request: SampleRequest) -> ts.SampleResponse:
    """One request through ``TorchEngine.sample_many``, the path every backend call takes: its
    response, or the error it got raised here."""
    (answer,) = engine.sample_many([(sampler_id, request)])
    if isinstance(answer, Exception):
        raise answer
    assert isinstance(answer, ts.SampleResponse), repr(answer)
    return answer
