"""The Modal backend's wire: tinker-std requests and results as compact plain data.

Both sides use this one module: the client (``backend.py``) encodes requests and decodes results,
the container (``service.py``) decodes requests and encodes results, and the offline test handle
(``handles.py``) pickles what crosses exactly as Modal's transport would. A payload holds only
``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, lists and str-keyed dicts, so Modal can
carry it with pickle or CBOR and neither side unpickles tinker-std classes.

Arrays travel as ``{"dtype", "shape", "data"}`` with little-endian ``data`` bytes, never as lists:
token ids as int32 (int64 when an id does not fit), ``TensorData`` in its own dtype, and floats
that are not tensors (logprobs) as float32 when that is lossless, float64 otherwise. ``None``
inside a float array (``prompt_logprobs[0]``) is NaN plus a mask. Errors cross as
``TinkerError.to_payload()`` and are rebuilt as the same ``tinker_std.errors`` class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tinker_std.backend import AdapterState, ModelSpec, SampleRequest, SamplerSpec
from tinker_std.errors import TinkerError, error_payload
from tinker_std.types import (
    AdamParams,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    LoraConfig,
    ModelInput,
    ParsedCheckpointTinkerPath,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    TensorData,
)
from tinker_std.types.sampling import PromptAltTokens

__all__ = [
    "Payload",
    "check_plain",
    "pack_array",
    "unpack_array",
    "pack_tokens",
    "pack_floats",
    "encode_datums",
    "decode_datums",
    "encode_forward_backward_output",
    "decode_forward_backward_output",
    "encode_sample_request",
    "decode_sample_request",
    "encode_sample_response",
    "decode_sample_response",
    "encode_model_spec",
    "decode_model_spec",
    "encode_sampler_spec",
    "decode_sampler_spec",
    "encode_adapter_state",
    "decode_adapter_state",
    "encode_path",
    "decode_path",
    "encode_lora",
    "decode_lora",
    "encode_adam",
    "decode_adam",
    "encode_capabilities",
    "decode_capabilities",
    "encode_error",
    "decode_error",
]

Payload = dict[str, Any]
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)
_INT32 = np.iinfo(np.int32)


def check_plain(value: Any, where: str = "payload") -> None:
    """``TypeError`` unless ``value`` is plain data (what this module promises to put on the wire)."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-str key {key!r}")
            check_plain(item, f"{where}.{key}")
        return
    raise TypeError(f"{where} is a {type(value).__name__}, not plain wire data")


# -- arrays --------------------------------------------------------------------------------------


def pack_array(array: npt.NDArray[Any]) -> Payload:
    """A numpy array as ``{"dtype", "shape", "data"}`` (little-endian bytes, row-major)."""
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": little.dtype.str, "shape": list(array.shape), "data": little.tobytes()}


def unpack_array(packed: Payload) -> npt.NDArray[Any]:
    """The array ``pack_array`` packed (a fresh, writable copy in native byte order)."""
    dtype = np.dtype(packed["dtype"])
    array = np.frombuffer(packed["data"], dtype=dtype).reshape(packed["shape"])
    return array.astype(dtype.newbyteorder("="), copy=True)


def pack_tokens(tokens: Sequence[int] | npt.NDArray[Any]) -> Payload:
    """Token ids as int32, or int64 when some id does not fit in int32."""
    wide = np.asarray(tokens, dtype=np.int64)
    fits = wide.size == 0 or (int(wide.min()) >= _INT32.min and int(wide.max()) <= _INT32.max)
    return pack_array(wide.astype(np.int32) if fits else wide)


def pack_floats(values: Sequence[float] | npt.NDArray[Any]) -> Payload:
    """Floats as float32 when that round-trips every value exactly, else float64."""
    wide = np.asarray(values, dtype=np.float64)
    narrow = wide.astype(np.float32)
    same = np.array_equal(narrow.astype(np.float64), wide, equal_nan=True)
    return pack_array(narrow if same else wide)


def _ints(packed: Payload) -> list[int]:
    return [int(x) for x in unpack_array(packed).reshape(-1).tolist()]


def _floats(packed: Payload) -> list[float]:
    return [float(x) for x in unpack_array(packed).reshape(-1).tolist()]


def _pack_optional_floats(values: Sequence[float | None]) -> Payload:
    mask = np.array([v is not None for v in values], dtype=np.bool_)
    filled = [math.nan if v is None else float(v) for v in values]
    return {"values": pack_floats(filled), "present": pack_array(mask)}


def _unpack_optional_floats(packed: Payload) -> list[float | None]:
    values = _floats(packed["values"])
    present = unpack_array(packed["present"]).tolist()
    return [v if keep else None for v, keep in zip(values, present, strict=True)]


def _pack_tensor(tensor: TensorData) -> Payload:
    return pack_array(tensor.to_numpy())


def _unpack_tensor(packed: Payload) -> TensorData:
    return TensorData.from_numpy(unpack_array(packed))


# -- training ------------------------------------------------------------------------------------


def encode_datums(data: Sequence[Datum]) -> list[Payload]:
    return [
        {
            "chunks": [pack_tokens(chunk.tokens) for chunk in datum.model_input.chunks],
            "inputs": {key: _pack_tensor(value) for key, value in datum.loss_fn_inputs.items()},
        }
        for datum in data
    ]


def decode_datums(items: Sequence[Payload]) -> list[Datum]:
    return [
        Datum(
            model_input=ModelInput(chunks=[EncodedTextChunk(tokens=_ints(chunk)) for chunk in item["chunks"]]),
            loss_fn_inputs={key: _unpack_tensor(value) for key, value in item["inputs"].items()},
        )
        for item in items
    ]


def encode_forward_backward_output(output: ForwardBackwardOutput) -> Payload:
    return {
        "loss_fn_output_type": output.loss_fn_output_type,
        "outputs": [{key: _pack_tensor(value) for key, value in row.items()} for row in output.loss_fn_outputs],
        "metrics": {key: float(value) for key, value in output.metrics.items()},
    }


def decode_forward_backward_output(payload: Payload) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_output_type=payload["loss_fn_output_type"],
        loss_fn_outputs=[{key: _unpack_tensor(value) for key, value in row.items()} for row in payload["outputs"]],
        metrics=dict(payload["metrics"]),
    )


def encode_lora(lora: LoraConfig) -> Payload:
    return lora.model_dump(mode="json")


def decode_lora(payload: Payload) -> LoraConfig:
    return LoraConfig.model_validate(payload)


def encode_adam(params: AdamParams) -> Payload:
    return params.model_dump(mode="json")


def decode_adam(payload: Payload) -> AdamParams:
    return AdamParams.model_validate(payload)


def encode_path(path: ParsedCheckpointTinkerPath) -> str:
    return path.tinker_path


def decode_path(tinker_path: str) -> ParsedCheckpointTinkerPath:
    return ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)


def encode_model_spec(spec: ModelSpec) -> Payload:
    return {
        "model_id": spec.model_id,
        "base_model": spec.base_model,
        "vocab_size": spec.vocab_size,
        "max_context_length": spec.max_context_length,
        "lora": encode_lora(spec.lora),
    }


def decode_model_spec(payload: Payload) -> ModelSpec:
    return ModelSpec(**{**payload, "lora": decode_lora(payload["lora"])})


def encode_sampler_spec(spec: SamplerSpec) -> Payload:
    return {
        "sampler_id": spec.sampler_id,
        "base_model": spec.base_model,
        "vocab_size": spec.vocab_size,
        "max_context_length": spec.max_context_length,
    }


def decode_sampler_spec(payload: Payload) -> SamplerSpec:
    return SamplerSpec(**payload)


def _pack_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> Payload:
    return {name: pack_array(np.asarray(value)) for name, value in arrays.items()}


def _unpack_arrays(packed: Payload) -> dict[str, npt.NDArray[Any]]:
    return {name: unpack_array(value) for name, value in packed.items()}


def encode_adapter_state(state: AdapterState) -> Payload:
    return {
        "weights": _pack_arrays(state.weights),
        "grads": _pack_arrays(state.grads),
        "exp_avg": _pack_arrays(state.exp_avg),
        "exp_avg_sq": _pack_arrays(state.exp_avg_sq),
        "step": int(state.step),
    }


def decode_adapter_state(payload: Payload) -> AdapterState:
    return AdapterState(
        weights=_unpack_arrays(payload["weights"]),
        grads=_unpack_arrays(payload["grads"]),
        exp_avg=_unpack_arrays(payload["exp_avg"]),
        exp_avg_sq=_unpack_arrays(payload["exp_avg_sq"]),
        step=int(payload["step"]),
    )


def encode_capabilities(response: GetServerCapabilitiesResponse) -> Payload:
    return response.model_dump(mode="json")


def decode_capabilities(payload: Payload) -> GetServerCapabilitiesResponse:
    return GetServerCapabilitiesResponse.model_validate(payload)


# -- sampling ------------------------------------------------------------------------------------


def encode_sample_request(request: SampleRequest) -> Payload:
    return {
        "prompt": pack_tokens(request.prompt),
        "num_samples": request.num_samples,
        "sampling_params": request.sampling_params.model_dump(mode="json"),
        "include_prompt_logprobs": request.include_prompt_logprobs,
        "topk_prompt_logprobs": request.topk_prompt_logprobs,
        "topk_sample_logprobs": request.topk_sample_logprobs,
        "target_prompt_ids": None
        if request.target_prompt_ids is None
        else [pack_tokens(row) for row in request.target_prompt_ids],
        "prompt_alt_tokens_k": request.prompt_alt_tokens_k,
    }


def decode_sample_request(payload: Payload) -> SampleRequest:
    return SampleRequest(
        prompt=_ints(payload["prompt"]),
        num_samples=int(payload["num_samples"]),
        sampling_params=SamplingParams.model_validate(payload["sampling_params"]),
        include_prompt_logprobs=bool(payload["include_prompt_logprobs"]),
        topk_prompt_logprobs=int(payload["topk_prompt_logprobs"]),
        topk_sample_logprobs=int(payload["topk_sample_logprobs"]),
        target_prompt_ids=None
        if payload["target_prompt_ids"] is None
        else tuple(tuple(_ints(row)) for row in payload["target_prompt_ids"]),
        prompt_alt_tokens_k=int(payload["prompt_alt_tokens_k"]),
    )


def _encode_topk(rows: Sequence[Sequence[tuple[int, float]] | None]) -> Payload:
    width = max((len(row) for row in rows if row is not None), default=0)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    logprobs = np.zeros((len(rows), width), dtype=np.float64)
    lengths = np.full(len(rows), -1, dtype=np.int32)  # -1: no row (None)
    for i, row in enumerate(rows):
        if row is None:
            continue
        lengths[i] = len(row)
        for j, (token, logprob) in enumerate(row):
            ids[i, j], logprobs[i, j] = token, logprob
    return {"ids": pack_tokens(ids), "logprobs": pack_floats(logprobs), "lengths": pack_array(lengths)}


def _decode_topk(payload: Payload) -> list[list[tuple[int, float]] | None]:
    ids = unpack_array(payload["ids"]).astype(np.int64).tolist()
    logprobs = unpack_array(payload["logprobs"]).astype(np.float64).tolist()
    lengths = unpack_array(payload["lengths"]).tolist()
    rows: list[list[tuple[int, float]] | None] = []
    for i, n in enumerate(lengths):
        rows.append(None if n < 0 else [(int(ids[i][j]), float(logprobs[i][j])) for j in range(n)])
    return rows


def encode_sample_response(response: SampleResponse) -> Payload:
    return {
        "sequences": [
            {
                "stop_reason": seq.stop_reason,
                "tokens": pack_tokens(seq.tokens),
                "logprobs": None if seq.logprobs is None else pack_floats(seq.logprobs),
                "sequence_id": seq.sequence_id,
                "topk_logprobs": None if seq.topk_logprobs is None else _encode_topk(seq.topk_logprobs),
            }
            for seq in response.sequences
        ],
        "prompt_logprobs": None
        if response.prompt_logprobs is None
        else _pack_optional_floats(response.prompt_logprobs),
        "topk_prompt_logprobs": None
        if response.topk_prompt_logprobs is None
        else _encode_topk(response.topk_prompt_logprobs),
        "target_prompt_logprobs": None
        if response.target_prompt_logprobs is None
        else _pack_tensor(response.target_prompt_logprobs),
        "prompt_alt_tokens": None
        if response.prompt_alt_tokens is None
        else {
            "tokens": _pack_tensor(response.prompt_alt_tokens.tokens),
            "logprobs": _pack_tensor(response.prompt_alt_tokens.logprobs),
        },
        "type": response.type,
    }


def decode_sample_response(payload: Payload) -> SampleResponse:
    return SampleResponse(
        sequences=[
            SampledSequence(
                stop_reason=seq["stop_reason"],
                tokens=_ints(seq["tokens"]),
                logprobs=None if seq["logprobs"] is None else _floats(seq["logprobs"]),
                sequence_id=seq["sequence_id"],
                topk_logprobs=None if seq["topk_logprobs"] is None else _decode_topk(seq["topk_logprobs"]),
            )
            for seq in payload["sequences"]
        ],
        prompt_logprobs=None
        if payload["prompt_logprobs"] is None
        else _unpack_optional_floats(payload["prompt_logprobs"]),
        topk_prompt_logprobs=None
        if payload["topk_prompt_logprobs"] is None
        else _decode_topk(payload["topk_prompt_logprobs"]),
        target_prompt_logprobs=None
        if payload["target_prompt_logprobs"] is None
        else _unpack_tensor(payload["target_prompt_logprobs"]),
        prompt_alt_tokens=None
        if payload["prompt_alt_tokens"] is None
        else PromptAltTokens(
            tokens=_unpack_tensor(payload["prompt_alt_tokens"]["tokens"]),
            logprobs=_unpack_tensor(payload["prompt_alt_tokens"]["logprobs"]),
        ),
        type=payload["type"],
    )


# -- errors --------------------------------------------------------------------------------------


def encode_error(exc: BaseException) -> Payload:
    """A raised exception as plain data (``tinker_std.errors.error_payload``): tinker-std's typed
    errors keep their class and fields; anything else becomes a ``RequestFailedError`` (category
    ``server``) naming the original type."""
    return error_payload(exc)


def decode_error(payload: Payload) -> TinkerError:
    """The typed error ``encode_error`` encoded."""
    return TinkerError.from_payload(payload)
