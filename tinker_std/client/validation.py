"""Request validation shared by every backend (spec TYP, ALN, ERR).

Every check runs before a request is queued, so a rejected request changes nothing. Errors are
``BadRequestError`` with a dotted ``field`` path, ``ContextLengthError`` for over-long inputs, and
``Unsupported`` for optional features the backend does not declare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backend import ModelSpec, SamplerSpec
from ..capabilities import Capabilities
from ..errors import BadRequestError, ContextLengthError, Unsupported
from ..loss_signatures import LOSS_SIGNATURES as LOSSES
from ..loss_signatures import LossSignature as LossSpec
from ..types import AdamParams, Datum, ModelInput, ParsedCheckpointTinkerPath, SamplingParams, TensorData

__all__ = [
    "validate_forward_backward",
    "validate_custom_loss_data",
    "validate_adam_params",
    "validate_sample",
    "validate_checkpoint_name",
    "validate_checkpoint_path",
]

_PER_POSITION_FLOATS = (
    "weights",
    "advantages",
    "logprobs",
    "clip_low_threshold",
    "clip_high_threshold",
    "sequence_ratio_mask",
)


def _check_tokens(field: str, tokens: Sequence[int], vocab_size: int, max_len: int) -> None:
    if len(tokens) == 0:
        raise BadRequestError(field, "must contain at least one token")
    if len(tokens) > max_len:
        raise ContextLengthError(
            field, f"has {len(tokens)} tokens, more than the model's maximum context length {max_len}"
        )
    bad = next((i for i, t in enumerate(tokens) if t >= vocab_size), None)
    if bad is not None:
        raise BadRequestError(
            field, f"token id {tokens[bad]} at position {bad} is not below the vocabulary size {vocab_size}"
        )


def _check_data_list(data: Any) -> list[Datum]:
    if not isinstance(data, (list, tuple)) or len(data) == 0:
        raise BadRequestError("data", "must be a non-empty list of Datum")
    for i, datum in enumerate(data):
        if not isinstance(datum, Datum):
            raise BadRequestError(f"data[{i}]", f"must be a Datum, got {type(datum).__name__}")
    return list(data)


def _resolve_loss(loss_fn: Any, caps: Capabilities, backend: str) -> LossSpec:
    if not isinstance(loss_fn, str) or loss_fn not in LOSSES:
        raise BadRequestError("loss_fn", f"unknown loss function {loss_fn!r}; known: {', '.join(LOSSES)}")
    if not caps.supports_loss(loss_fn):
        raise Unsupported(f"loss:{loss_fn}", backend)
    return LOSSES[loss_fn]


def _resolve_config(spec: LossSpec, config: Mapping[str, Any] | None) -> dict[str, float]:
    resolved = dict(spec.config_defaults)
    if config is None:
        return resolved
    if not isinstance(config, Mapping):
        raise BadRequestError("loss_fn_config", "must be a mapping of config keys to numbers")
    for key, value in config.items():
        field = f"loss_fn_config.{key}"
        if key not in spec.config_defaults:
            known = ", ".join(spec.config_defaults) or "none"
            raise BadRequestError(field, f"is not a config key of {spec.name} (known: {known})")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BadRequestError(field, f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise BadRequestError(field, f"must be finite, got {number}")
        resolved[key] = number
    return resolved


def _check_input(field: str, tensor: TensorData, dtype: str, shape: list[int], finite: bool) -> None:
    if tensor.dtype != dtype:
        raise BadRequestError(field, f"must have dtype {dtype}, got {tensor.dtype}")
    if tensor.resolved_shape != shape:
        raise BadRequestError(field, f"must have shape {shape}, got {tensor.resolved_shape}")
    if finite and not np.all(np.isfinite(tensor.to_numpy())):
        raise BadRequestError(field, "must contain only finite values (found NaN or inf)")


def _validate_datum(i: int, datum: Datum, spec: LossSpec, model: ModelSpec, caps: Capabilities, backend: str) -> None:
    prefix = f"data[{i}]"
    tokens = datum.model_input.to_ints()
    _check_tokens(f"{prefix}.model_input", tokens, model.vocab_size, model.max_context_length)
    n = len(tokens)
    inputs = datum.loss_fn_inputs
    allowed = set(spec.required_inputs) | set(spec.optional_inputs)
    for key in spec.required_inputs:
        if key not in inputs:
            raise BadRequestError(f"{prefix}.loss_fn_inputs.{key}", f"is missing; {spec.name} requires it")
    for key in inputs:
        if key not in allowed:
            raise BadRequestError(
                f"{prefix}.loss_fn_inputs.{key}",
                f"is not an input of {spec.name} (accepted: {', '.join(sorted(allowed))})",
            )
    target = inputs["target_tokens"]
    target_field = f"{prefix}.loss_fn_inputs.target_tokens"
    target_shape = target.resolved_shape
    if target.dtype != "int64":
        raise BadRequestError(target_field, f"must have dtype int64, got {target.dtype}")
    if len(target_shape) == 2 and spec.allows_soft_targets:
        if not caps.supports("soft_targets"):
            raise Unsupported("soft_targets", backend)
        if target_shape[0] != n or target_shape[1] < 1:
            raise BadRequestError(target_field, f"must have shape [{n}] or [{n}, K] with K >= 1, got {target_shape}")
    elif target_shape != [n]:
        expected = f"[{n}] or [{n}, K]" if spec.allows_soft_targets else f"[{n}]"
        raise BadRequestError(
            target_field, f"must have shape {expected} (one row per input position), got {target_shape}"
        )
    values = target.to_numpy()
    if values.size and (values.min() < 0 or values.max() >= model.vocab_size):
        raise BadRequestError(
            target_field, f"token ids must be in [0, {model.vocab_size}), got {values.min()}..{values.max()}"
        )
    for key in _PER_POSITION_FLOATS:
        if key in inputs:
            shape = target_shape if key == "weights" else [n]
            _check_input(f"{prefix}.loss_fn_inputs.{key}", inputs[key], "float32", shape, finite=True)


def validate_forward_backward(
    data: Any,
    loss_fn: Any,
    loss_fn_config: Mapping[str, Any] | None,
    model: ModelSpec,
    caps: Capabilities,
    backend: str,
) -> tuple[list[Datum], dict[str, float]]:
    """Validate a forward / forward_backward request; returns the data and the resolved config."""
    datums = _check_data_list(data)
    spec = _resolve_loss(loss_fn, caps, backend)
    config = _resolve_config(spec, loss_fn_config)
    for i, datum in enumerate(datums):
        _validate_datum(i, datum, spec, model, caps, backend)
    return datums, config


def validate_custom_loss_data(data: Any, model: ModelSpec, caps: Capabilities, backend: str) -> list[Datum]:
    """forward_backward_custom needs ``target_tokens`` ((N,), or (N, K) with ``soft_targets``); other inputs
    are passed to the user's fn unchecked."""
    datums = _check_data_list(data)
    for i, datum in enumerate(datums):
        stripped = Datum(
            model_input=datum.model_input,
            loss_fn_inputs={k: v for k, v in datum.loss_fn_inputs.items() if k == "target_tokens"},
        )
        _validate_datum(i, stripped, LOSSES["cross_entropy"], model, caps, backend)
    return datums


def validate_adam_params(params: Any) -> AdamParams:
    if isinstance(params, AdamParams):
        return params
    if isinstance(params, Mapping):
        try:
            return AdamParams(**params)
        except ValueError as exc:
            raise BadRequestError("optim_params", str(exc)) from None
    raise BadRequestError("optim_params", f"must be AdamParams, got {type(params).__name__}")


def validate_sample(
    prompt: Any,
    num_samples: Any,
    params: Any,
    topk_prompt_logprobs: Any,
    sampler: SamplerSpec,
    caps: Capabilities,
    backend: str,
) -> tuple[list[int], SamplingParams]:
    """Validate a sample request; returns the prompt tokens and the sampling params."""
    if not isinstance(prompt, ModelInput):
        raise BadRequestError("prompt", f"must be a ModelInput, got {type(prompt).__name__}")
    if not isinstance(params, SamplingParams):
        raise BadRequestError("sampling_params", f"must be SamplingParams, got {type(params).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise BadRequestError("num_samples", f"must be an int >= 1, got {num_samples!r}")
    if isinstance(topk_prompt_logprobs, bool) or not isinstance(topk_prompt_logprobs, int) or topk_prompt_logprobs < 0:
        raise BadRequestError("topk_prompt_logprobs", f"must be an int >= 0, got {topk_prompt_logprobs!r}")
    if topk_prompt_logprobs > 0 and not caps.supports("topk_prompt_logprobs"):
        raise Unsupported("topk_prompt_logprobs", backend)
    tokens = prompt.to_ints()
    _check_tokens("prompt", tokens, sampler.vocab_size, sampler.max_context_length)
    if params.max_tokens is not None and len(tokens) + params.max_tokens > sampler.max_context_length:
        raise ContextLengthError(
            "sampling_params.max_tokens",
            f"prompt ({len(tokens)}) + max_tokens ({params.max_tokens}) exceeds the maximum context length "
            f"{sampler.max_context_length}",
        )
    if len(tokens) >= sampler.max_context_length and params.max_tokens is None:
        raise ContextLengthError("prompt", "leaves no room for a completion within the maximum context length")
    if isinstance(params.stop, list):
        for j, item in enumerate(params.stop):
            if isinstance(item, int) and item >= sampler.vocab_size:
                raise BadRequestError(f"sampling_params.stop[{j}]", f"token id {item} is not below the vocabulary size")
    return tokens, params


def validate_checkpoint_name(name: Any) -> str:
    from ..types.checkpoint import check_name

    if not isinstance(name, str):
        raise BadRequestError("name", f"must be a string, got {type(name).__name__}")
    try:
        check_name(name, "checkpoint name")
    except ValueError as exc:
        raise BadRequestError("name", str(exc)) from None
    return name


def validate_checkpoint_path(path: Any, field: str = "path") -> ParsedCheckpointTinkerPath:
    """``path`` parsed as a ``tinker://`` checkpoint path; ``BadRequestError`` on ``field``."""
    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError as exc:
        raise BadRequestError(field, str(exc)) from None
