"""The SDK 0.38 request fields the routes check or translate beyond the library (spec SDK-1..SDK-6,
LOSS-16..LOSS-19; the classification is ``tinker_std.sdk_surface``).

- refusals by name: ``project_id`` on a session, non-Adam ``optimizer_config``,
  ``weights_access_token``, sampling extras outside spec 0.2, ``base_model``/``model_path`` in an
  ``asample`` body, ``kind`` other than ``snapshot`` / ``inflight``;
- stability records: the SDK names a sampled sequence by the id the server answers ``asample``
  with (``{request_id}-{j}``); the server records a ``record_stability_info`` sample under that id
  *scoped to the tenant* in the service's ``StabilityRecords``, and rewrites the span ids of a
  training request the same way, so a tenant can only name its own samples;
- protobuf: provenance spans of a ``Datum`` in, top-k logprobs of sampled tokens out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from tinker_std.errors import BadRequestError
from tinker_std.stability import StabilityRecords
from tinker_std.types import Datum, PromptProvenanceSpan, SampledProvenanceSpan, SampleResponse, TensorData
from tinker_std.types.provenance import ProvenanceSpans

__all__ = [
    "SampleOptions",
    "check_optimizer_config",
    "check_session_body",
    "check_weights_access_token",
    "check_sampler_kind",
    "decode_spans",
    "encode_topk_sampled",
    "record_sample",
    "sample_options",
    "scoped_datums",
]

ADAM_TYPES = (None, "adam", "adamw")


def check_session_body(body: Mapping[str, Any]) -> None:
    if body.get("project_id") is not None:
        raise BadRequestError("project_id", "projects are not part of tinker-std (SDK-1); leave project_id unset")


def check_optimizer_config(value: Any, field: str = "optimizer_config") -> None:
    """Only AdamW: ``None`` or ``{"type": "adam"}`` (the SDK's ``AdamOptimizerConfig``)."""
    kind = value.get("type") if isinstance(value, Mapping) else value
    if value is not None and kind not in ADAM_TYPES:
        raise BadRequestError(field, f"only AdamW is part of tinker-std spec 0.2 (SDK-5), got {kind!r}")


def check_weights_access_token(value: Any) -> None:
    if value is not None:
        raise BadRequestError("weights_access_token", "cross-account weight access is not part of tinker-std (SDK-1)")


def check_sampler_kind(value: Any, named: bool = False) -> None:
    """``kind`` of a sampler save: ``snapshot`` or ``inflight`` (INF-6); an inflight save has no
    checkpoint name (``named``), as in the SDK, which sends none."""
    if value not in (None, "snapshot", "inflight"):
        raise BadRequestError("kind", f"must be 'snapshot' or 'inflight', got {value!r}")
    if value == "inflight" and named:
        raise BadRequestError("kind", "an inflight save publishes weights to samplers and takes no checkpoint path")


class SampleOptions:
    """The ``asample`` body fields beyond prompt, count and parameters, checked."""

    def __init__(
        self,
        topk_sample_logprobs: int,
        prompt_logprobs_last_n: int | None,
        record: bool,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: Any = 0,
    ) -> None:
        self.topk_sample_logprobs = topk_sample_logprobs
        self.prompt_logprobs_last_n = prompt_logprobs_last_n
        self.record = record
        #: SDK-7: the ids to score (dense or CSR); checked against the prompt by the client layer
        self.target_prompt_logprobs = target_prompt_logprobs
        #: SDK-8: checked by the client layer
        self.prompt_alt_tokens_k = prompt_alt_tokens_k


def sample_options(body: Mapping[str, Any]) -> SampleOptions:
    for name in ("base_model", "model_path"):
        if body.get(name) is not None:
            raise BadRequestError(name, "sample through a sampling session (sampling_session_id), not a model (SDK-1)")
    topk = body.get("topk_sample_logprobs") or 0
    last_n = body.get("prompt_logprobs_last_n")
    record = body.get("record_stability_info")
    if record is not None and not isinstance(record, bool):
        raise BadRequestError("record_stability_info", f"must be a bool, got {record!r}")
    return SampleOptions(
        topk, last_n, bool(record), _target_ids(body.get("target_prompt_logprobs")), body.get("prompt_alt_tokens_k")
    )


def _target_ids(raw: Any) -> TensorData | None:
    """The request's ``target_prompt_logprobs`` (SDK-7), dense or in the SDK's sparse CSR form.
    A CSR tensor keeps which cells it listed (``TensorData``), so the client layer reads its
    unlisted cells as ``-1`` (not scored), exactly as in process; a malformed CSR layout is a
    ``BadRequestError`` naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequestError("target_prompt_logprobs", "must be a TensorData object")
    try:
        return TensorData.model_validate(raw)
    except ValidationError as exc:
        raise BadRequestError("target_prompt_logprobs", str(exc.errors()[0].get("msg", exc))) from None


def _scoped(tenant: str, sequence_id: str) -> str:
    return f"{tenant}\x1f{sequence_id}"


def record_sample(
    records: StabilityRecords, tenant: str, ids: Sequence[str], prompt: Sequence[int], response: SampleResponse
) -> None:
    """Record a ``record_stability_info`` sample under the ids the SDK was given, scoped to ``tenant``."""
    named = [
        seq.model_copy(update={"sequence_id": _scoped(tenant, sid)})
        for seq, sid in zip(response.sequences, ids, strict=True)
    ]
    records.record(prompt, named)


def scoped_datums(data: Sequence[Datum], tenant: str) -> list[Datum]:
    """``data`` with every span's ``sequence_id`` scoped to ``tenant`` (see ``record_sample``)."""
    out = []
    for datum in data:
        if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
            out.append(datum)
            continue
        out.append(
            datum.model_copy(
                update={
                    "model_input_spans": [_rescope(s, tenant) for s in datum.model_input_spans],
                    "loss_fn_input_spans": [_rescope(s, tenant) for s in datum.loss_fn_input_spans],
                }
            )
        )
    return out


def _rescope(span: PromptProvenanceSpan | SampledProvenanceSpan, tenant: str) -> Any:
    return span.model_copy(update={"sequence_id": _scoped(tenant, span.sequence_id)})


def decode_spans(msg: Any, field: str) -> ProvenanceSpans | None:
    """The protobuf ``ProvenanceSpan`` list ``msg`` as tinker-std spans (``None`` when empty)."""
    spans: ProvenanceSpans = []
    for j, span in enumerate(msg):
        kind = span.WhichOneof("span")
        arm = getattr(span, kind) if kind else None
        if arm is None:
            raise BadRequestError(f"{field}[{j}]", "a provenance span must be prompt_tokens or sampled_tokens")
        cls = PromptProvenanceSpan if kind == "prompt_tokens" else SampledProvenanceSpan
        try:
            spans.append(cls(sequence_id=arm.sequence_id, offset=int(arm.offset), length=int(arm.length)))
        except ValueError as exc:
            raise BadRequestError(f"{field}[{j}]", str(exc)) from None
    return spans or None


def encode_topk_sampled(pb: Any, out: Any, rows: Sequence[Sequence[tuple[int, float]] | None]) -> None:
    """Fill ``out.topk_sampled_logprobs`` (a ``TopkLogprobs``: ``(n, k)`` row-major int32 ids and
    float32 logprobs) from one sequence's rows."""
    k = max((len(row) for row in rows if row), default=0)
    if k == 0:
        return
    pad = (0, -99999.0)
    cells = [list(row or []) + [pad] * (k - len(row or [])) for row in rows]
    out.topk_sampled_logprobs.token_ids = np.asarray([t for row in cells for t, _ in row], dtype="<i4").tobytes()
    out.topk_sampled_logprobs.logprobs = np.asarray([lp for row in cells for _, lp in row], dtype="<f4").tobytes()
    out.topk_sampled_logprobs.k = k
    out.topk_sampled_logprobs.length = len(cells)
