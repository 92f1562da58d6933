"""tinker-std types <-> the official SDK's types. The two are field-compatible; only the classes
differ (tinker-std: pydantic models; SDK 0.38: frozen dataclasses backed by numpy arrays)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinker_std.backend import SampleRequest
from tinker_std.types import (
    TOPK_PAD_LOGPROB,
    TOPK_PAD_TOKEN,
    AdamParams,
    Checkpoint,
    Datum,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    TensorData,
    TrainingRun,
)
from tinker_std.types.sampling import PromptAltTokens

__all__ = [
    "adam_to_sdk",
    "capabilities_from_sdk",
    "checkpoint_from_sdk",
    "datum_to_sdk",
    "forward_backward_output_from_sdk",
    "sample_response_from_sdk",
    "target_ids_to_sdk",
    "sampling_params_to_sdk",
    "tensor_from_sdk",
    "training_run_from_sdk",
]

_NUMPY = {"int64": np.int64, "float32": np.float32}


def datum_to_sdk(datum: Datum) -> Any:
    """A validated tinker-std ``Datum`` (text tokens only) as ``tinker.Datum``."""
    import tinker

    inputs = {
        key: tinker.TensorData(
            data=np.asarray(value.data, dtype=_NUMPY[value.dtype]).reshape(value.resolved_shape),
            dtype=value.dtype,
            shape=value.resolved_shape,
        )
        for key, value in datum.loss_fn_inputs.items()
    }
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(datum.model_input.to_ints()), loss_fn_inputs=inputs)


def tensor_from_sdk(value: Any) -> TensorData:
    """``tinker.TensorData`` as tinker-std's (dense, row-major)."""
    array = np.asarray(value.to_numpy())
    if array.dtype.kind in ("i", "u"):
        return TensorData(data=array.reshape(-1).tolist(), dtype="int64", shape=list(array.shape))
    return TensorData(data=array.reshape(-1).tolist(), dtype="float32", shape=list(array.shape))


def forward_backward_output_from_sdk(output: Any) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_output_type=output.loss_fn_output_type,
        loss_fn_outputs=[{key: tensor_from_sdk(v) for key, v in row.items()} for row in output.loss_fn_outputs],
        metrics={key: float(v) for key, v in output.metrics.items()},
    )


def adam_to_sdk(params: AdamParams) -> Any:
    import tinker

    return tinker.AdamParams(**params.model_dump())


def sampling_params_to_sdk(params: SamplingParams) -> Any:
    import tinker

    return tinker.SamplingParams(**params.model_dump())


def _maybe_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def target_ids_to_sdk(ids: tuple[tuple[int, ...], ...] | None) -> Any:
    """SDK-7's request ids (``SampleRequest.target_prompt_ids``) as the SDK's dense int64
    ``TensorData`` ``[len(prompt) - 1, K]`` (``-1``: no logprob asked), or ``None``."""
    if ids is None:
        return None
    import tinker

    return tinker.TensorData.from_numpy(np.asarray(ids, dtype=np.int64).reshape(len(ids), -1))


def sample_response_from_sdk(response: Any, request: SampleRequest) -> SampleResponse:
    """``tinker.SampleResponse`` as tinker-std's, with what ``request`` asked for: prompt logprobs
    the wire marks NaN become ``None``; the extras (SDK-6/7/8) are copied when asked for."""
    sequences = [
        SampledSequence(
            stop_reason=seq.stop_reason,
            tokens=[int(t) for t in seq.tokens],
            logprobs=None if seq.logprobs is None else [float(v) for v in seq.logprobs],
            sequence_id=seq.sequence_id or "",
            topk_logprobs=_sample_topk(seq) if request.topk_sample_logprobs else None,
        )
        for seq in response.sequences
    ]
    prompt = response.prompt_logprobs if request.include_prompt_logprobs else None
    target = response.target_prompt_logprobs if request.target_prompt_ids is not None else None
    alt = response.prompt_alt_tokens if request.prompt_alt_tokens_k else None
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=None if prompt is None else [_maybe_nan(v) for v in prompt],
        topk_prompt_logprobs=_topk_rows(response.topk_prompt_logprobs_np) if request.topk_prompt_logprobs else None,
        target_prompt_logprobs=None if target is None else _tensor(target, np.float32),
        prompt_alt_tokens=None
        if alt is None
        else PromptAltTokens(tokens=_tensor(alt.tokens, np.int64), logprobs=_tensor(alt.logprobs, np.float32)),
        type="sample",
    )


def _tensor(data: Any, dtype: type[np.generic]) -> TensorData:
    """An SDK ``TensorData`` (dense or CSR) as tinker-std's dense one of ``dtype``."""
    return TensorData.from_numpy(np.asarray(data.to_numpy(), dtype=dtype))


def _sample_topk(seq: Any) -> list[list[tuple[int, float]] | None] | None:
    """A sequence's SDK-6 rows, from the wire's matrices when the SDK kept them (padding kept as
    for prompt rows), else from its list view."""
    if getattr(seq, "topk_logprobs_np", None) is not None:
        return _topk_rows(seq.topk_logprobs_np)
    rows = seq.topk_logprobs
    return None if rows is None else [None if r is None else [(int(t), float(lp)) for t, lp in r] for r in rows]


def _topk_rows(topk: Any) -> list[list[tuple[int, float]] | None] | None:
    """The wire's ``TopkLogprobs`` matrices as rows, keeping the ``(0, -99999.0)`` padding of a row
    (SMP-17: padded to k when V < k), which the SDK's list view strips; a row that starts with
    the padding was not computed (``None``, as in the SDK)."""
    if topk is None:
        return None
    ids, logprobs = np.asarray(topk.token_ids), np.asarray(topk.logprobs)
    rows: list[list[tuple[int, float]] | None] = []
    for row_ids, row_lps in zip(ids.tolist(), logprobs.tolist(), strict=True):
        if not row_ids or (row_ids[0] == TOPK_PAD_TOKEN and row_lps[0] == TOPK_PAD_LOGPROB):
            rows.append(None)
        else:
            rows.append([(int(t), float(lp)) for t, lp in zip(row_ids, row_lps, strict=True)])
    return rows


def capabilities_from_sdk(response: Any) -> GetServerCapabilitiesResponse:
    return GetServerCapabilitiesResponse.model_validate(
        {"supported_models": [m.model_dump(mode="json") for m in response.supported_models]}
    )


def checkpoint_from_sdk(checkpoint: Any) -> Checkpoint:
    return Checkpoint.model_validate(checkpoint.model_dump())


def training_run_from_sdk(run: Any) -> TrainingRun:
    last = max(
        (c.time for c in (run.last_checkpoint, run.last_sampler_checkpoint) if c is not None),
        default=None,
    )
    return TrainingRun(
        training_run_id=run.training_run_id,
        base_model=run.base_model,
        is_lora=run.is_lora,
        lora_rank=run.lora_rank,
        last_checkpoint_time=last,
    )
