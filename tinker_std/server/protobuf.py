"""The protobuf bodies of the Tinker wire protocol, to and from tinker-std types.

Three messages travel as protobuf (``tinker_public`` package, as generated in the official SDK,
which this module imports): the ``forward_backward`` request, and the ``ForwardBackwardOutput``
and ``SampleResponse`` results. Layouts:

- token chunks and sampled tokens: little-endian int32 arrays;
- ``Tensor``: ``dense`` bytes in ``dtype`` (float32 or int64; int32 widened to int64) with
  ``shape``, or ``sparse_csr`` (values, int64 row pointers, int64 column indices) for a 2-D tensor;
- ``ForwardBackwardOutput``: one ``ArrayRecord`` holding, per output field, every datum's tensor
  concatenated (``BatchedTensor.data``) with ``num_datums + 1`` int64 *byte* offsets and the
  per-datum shape after its first dimension (``trailing_shape``);
- ``SampleResponse``: float32 prompt logprobs with NaN for "none"; top-k prompt logprobs as an
  ``(n, k)`` row-major pair of arrays, empty cells ``(0, -99999.0)``, a row of empty cells for a
  position without scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tinker_std.errors import BadRequestError, LimitExceededError
from tinker_std.types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ModelInput,
    SampleResponse,
    TensorData,
)

from .sdk_fields import decode_spans, encode_topk_sampled

__all__ = [
    "ForwardBackwardCall",
    "decode_forward_backward",
    "parse_forward_backward",
    "encode_forward_backward_output",
    "encode_sample_response",
    "protobuf_module",
]

TOPK_PAD = (0, -99999.0)
#: Most values one loss input may declare (its dense size; LIM-4).
MAX_TENSOR_ELEMENTS = 2**24
#: ... and per token of its datum (an ``(N, K)`` soft-target input has ``K`` per token).
MAX_VALUES_PER_TOKEN = 4096


def protobuf_module() -> Any:
    """The SDK's generated ``tinker_public_pb2`` module; ``ImportError`` saying what to install."""
    try:
        from tinker.proto import tinker_public_pb2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the tinker-std server speaks the official SDK's protobuf messages; "
            "install them with: pip install 'tinker-std[server]'"
        ) from exc
    return tinker_public_pb2


@dataclass(frozen=True)
class ForwardBackwardCall:
    """A decoded ``forward_backward`` request body."""

    model_id: str
    seq_id: int
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float] | None
    forward_only: bool


def parse_forward_backward(body: bytes) -> Any:
    """The protobuf ``ForwardBackwardRequest`` in ``body`` (its ``model_id`` and ``seq_id`` are
    readable before the rest is checked); ``BadRequestError`` if it is not one."""
    pb = protobuf_module()
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:
        raise BadRequestError("body", f"not a ForwardBackwardRequest protobuf: {exc}") from exc
    return msg


def decode_forward_backward(body: bytes | Any) -> ForwardBackwardCall:
    """Parse (if bytes) and convert a ``ForwardBackwardRequest``; ``BadRequestError`` naming the
    field for what tinker-std cannot represent (image or audio chunks, string loss options,
    unknown dtypes, malformed tensors)."""
    pb = protobuf_module()
    msg = parse_forward_backward(bytes(body)) if isinstance(body, bytes | bytearray) else body
    try:
        return _decode(pb, msg)
    except BadRequestError:
        raise
    except Exception as exc:  # anything the checks below did not foresee is still the request's fault
        raise BadRequestError("body", f"malformed ForwardBackwardRequest: {type(exc).__name__}: {exc}") from exc


def _decode(pb: Any, msg: Any) -> ForwardBackwardCall:
    data = [_datum(pb, d, f"data[{i}]") for i, d in enumerate(msg.data)]
    config: dict[str, float] = {}
    for key, value in msg.loss_fn_config_v2.items():
        if value.WhichOneof("value") == "text":
            raise BadRequestError(f"loss_fn_config.{key}", "string options are not part of tinker-std v0.1")
        config[key] = float(value.number)
    for key, number in msg.loss_fn_config.items():
        config.setdefault(key, float(number))
    return ForwardBackwardCall(
        model_id=msg.model_id,
        seq_id=int(msg.seq_id),
        data=data,
        loss_fn=msg.loss_fn,
        loss_fn_config=config or None,
        forward_only=bool(msg.forward_only),
    )


def _datum(pb: Any, msg: Any, field: str) -> Datum:
    chunks = []
    for j, chunk in enumerate(msg.model_input):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise BadRequestError(f"{field}.model_input.chunks[{j}]", f"{kind} chunks are not supported")
        if len(chunk.encoded_text.tokens) % 4:
            raise BadRequestError(f"{field}.model_input.chunks[{j}].tokens", "must be little-endian int32 values")
        tokens = np.frombuffer(chunk.encoded_text.tokens, dtype="<i4")
        if len(tokens) and int(tokens.min()) < 0:
            raise BadRequestError(
                f"{field}.model_input.chunks[{j}].tokens", f"token id {int(tokens.min())} is negative"
            )
        # built without re-validation: int32 values, none negative (checked above), are what the
        # model's validator would accept unchanged (decoding is on a forward_backward's critical path)
        chunks.append(EncodedTextChunk.model_construct(tokens=tokens.tolist()))
    length = sum(len(c.tokens) for c in chunks)
    inputs = {name: _tensor(pb, t, f"{field}.loss_fn_inputs.{name}", length) for name, t in msg.loss_fn_inputs.items()}
    model_spans = decode_spans(msg.model_input_spans, f"{field}.model_input_spans")
    loss_spans = decode_spans(msg.loss_fn_input_spans, f"{field}.loss_fn_input_spans")
    if (model_spans is None) != (loss_spans is None):
        raise BadRequestError(f"{field}.loss_fn_input_spans", "provenance comes as a pair: both span lists or none")
    return Datum(
        model_input=ModelInput(chunks=chunks),
        loss_fn_inputs=inputs,
        model_input_spans=model_spans,
        loss_fn_input_spans=loss_spans,
    )


def _tensor(pb: Any, msg: Any, field: str, length: int) -> TensorData:
    """One loss input of a datum of ``length`` tokens. A declared shape is checked against the
    datum before anything is allocated (LIM-4): a ``sparse_csr`` tensor is expanded to its dense
    shape, so ``[1, 2**28]`` with no values would otherwise allocate 1 GiB from a few bytes."""
    numpy_dtypes = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}
    if msg.dtype not in numpy_dtypes:
        raise BadRequestError(field, f"unsupported dtype {msg.dtype} (float32, int64 or int32)")
    dtype: Literal["float32", "int64"] = "float32" if msg.dtype == pb.DTYPE_FLOAT32 else "int64"
    shape = [int(s) for s in msg.shape]
    if any(s < 0 for s in shape):
        raise BadRequestError(field, f"shape {shape} has a negative dimension")
    bound = min(MAX_TENSOR_ELEMENTS, max(length, 1) * MAX_VALUES_PER_TOKEN)
    if math.prod(shape) > bound:
        raise LimitExceededError(
            field,
            f"shape {shape} declares {math.prod(shape)} values; a loss input of a {length}-token datum holds at "
            f"most {bound} ({MAX_VALUES_PER_TOKEN} per token, {MAX_TENSOR_ELEMENTS} in all)",
        )
    if msg.WhichOneof("encoding") == "sparse_csr":
        values = np.frombuffer(msg.sparse_csr.values, dtype=numpy_dtypes[msg.dtype])
        rows = np.frombuffer(msg.sparse_csr.crow_indices, dtype="<i8")
        cols = np.frombuffer(msg.sparse_csr.col_indices, dtype="<i8")
        if len(shape) != 2 or len(rows) != shape[0] + 1 or len(cols) != len(values):
            raise BadRequestError(field, "sparse_csr needs a 2-D shape, rows + 1 row pointers and one column per value")
        if len(rows) and (rows[0] != 0 or rows[-1] != len(values) or bool(np.any(np.diff(rows) < 0))):
            raise BadRequestError(field, "sparse_csr row pointers must rise from 0 to the number of values")
        if len(cols) and (int(cols.min()) < 0 or int(cols.max()) >= shape[1]):
            raise BadRequestError(field, f"sparse_csr column index out of range [0, {shape[1]})")
        dense = np.zeros(shape, dtype=numpy_dtypes[msg.dtype])
        for r in range(shape[0]):
            dense[r, cols[rows[r] : rows[r + 1]]] = values[rows[r] : rows[r + 1]]
        return TensorData(data=dense.reshape(-1).tolist(), dtype=dtype, shape=shape)
    flat = np.frombuffer(msg.dense, dtype=numpy_dtypes[msg.dtype])
    if shape and math.prod(shape) != len(flat):
        raise BadRequestError(field, f"shape {shape} holds {math.prod(shape)} values but the tensor has {len(flat)}")
    # A dense tensor is built without re-validation (TensorData._normalise): values read as float32
    # are already float32-rounded and int32/int64 ones are whole numbers in range, so validating
    # would return the same lists at several times the cost, on the request's critical path.
    return TensorData.model_construct(data=flat.tolist(), dtype=dtype, shape=shape or None)


def encode_forward_backward_output(output: ForwardBackwardOutput) -> bytes:
    """``output`` as a protobuf ``ForwardBackwardOutput``: one ``ArrayRecord`` per run of
    consecutive datums whose fields have the same trailing shape. A ``BatchedTensor`` carries one
    trailing shape for all its datums, so ragged outputs (``(N, K)`` logprobs of soft targets
    with a different ``K`` per datum) go out as several internally rectangular records, which the
    SDK concatenates in order."""
    pb = protobuf_module()
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    for key, value in output.metrics.items():
        msg.metrics[key] = float(value)
    rows = [
        {name: value.to_numpy().astype("<f4" if value.dtype == "float32" else "<i8") for name, value in out.items()}
        for out in output.loss_fn_outputs
    ]
    runs: list[list[dict[str, np.ndarray]]] = []
    for row in rows:
        trailing = {name: a.shape[1:] for name, a in row.items()}
        if runs and {name: a.shape[1:] for name, a in runs[-1][0].items()} == trailing:
            runs[-1].append(row)
        else:
            runs.append([row])
    for run in runs:
        record = msg.loss_fn_outputs.add(type_tag=output.loss_fn_output_type, num_datums=len(run))
        for name, first in run[0].items():
            arrays = [row[name] for row in run]
            offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype("<i8")
            batched = record.fields[name]
            batched.data = b"".join(a.tobytes() for a in arrays)
            batched.offsets = offsets.tobytes()
            batched.dtype = pb.DTYPE_FLOAT32 if first.dtype == np.float32 else pb.DTYPE_INT64
            batched.trailing_shape.extend(list(first.shape[1:]))
    return bytes(msg.SerializeToString())


def encode_sample_response(response: SampleResponse) -> bytes:
    """``response`` as a protobuf ``SampleResponse``."""
    pb = protobuf_module()
    msg = pb.SampleResponse()
    for seq in response.sequences:
        out = msg.sequences.add()
        out.stop_reason = pb.STOP_REASON_STOP if seq.stop_reason == "stop" else pb.STOP_REASON_LENGTH
        out.tokens = np.asarray(seq.tokens, dtype="<i4").tobytes()
        if seq.logprobs is not None:
            out.logprobs = np.asarray(seq.logprobs, dtype="<f4").tobytes()
        if seq.topk_logprobs is not None:
            encode_topk_sampled(pb, out, seq.topk_logprobs)
    if response.prompt_logprobs is not None:
        values = [math.nan if lp is None else lp for lp in response.prompt_logprobs]
        msg.prompt_logprobs = np.asarray(values, dtype="<f4").tobytes()
    tops = response.topk_prompt_logprobs
    if tops is not None:
        k = max((len(row) for row in tops if row), default=0)
        if k > 0:
            cells = [list(row or []) + [TOPK_PAD] * (k - len(row or [])) for row in tops]
            msg.topk_prompt_logprobs.token_ids = np.asarray([t for row in cells for t, _ in row], dtype="<i4").tobytes()
            msg.topk_prompt_logprobs.logprobs = np.asarray(
                [lp for row in cells for _, lp in row], dtype="<f4"
            ).tobytes()
            msg.topk_prompt_logprobs.k = k
            msg.topk_prompt_logprobs.length = len(cells)
    targets = response.target_prompt_logprobs
    if targets is not None:  # SDK-7: float32, dense, the request's shape
        msg.target_prompt_logprobs.dense = np.asarray(targets.data, dtype="<f4").tobytes()
        msg.target_prompt_logprobs.dtype = pb.DTYPE_FLOAT32
        msg.target_prompt_logprobs.shape.extend(targets.shape or [len(targets.data)])
    alts = response.prompt_alt_tokens
    if alts is not None:  # SDK-8: two dense [P - 1, k] tensors, int64 ids and float32 logprobs
        msg.prompt_alt_tokens.tokens.dense = np.asarray(alts.tokens.data, dtype="<i8").tobytes()
        msg.prompt_alt_tokens.tokens.dtype = pb.DTYPE_INT64
        msg.prompt_alt_tokens.tokens.shape.extend(alts.tokens.shape or [])
        msg.prompt_alt_tokens.logprobs.dense = np.asarray(alts.logprobs.data, dtype="<f4").tobytes()
        msg.prompt_alt_tokens.logprobs.dtype = pb.DTYPE_FLOAT32
        msg.prompt_alt_tokens.logprobs.shape.extend(alts.logprobs.shape or [])
    return bytes(msg.SerializeToString())
