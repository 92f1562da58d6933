"""Stability records and provenance resolution for ``stable_reinforce`` (spec LOSS-16..LOSS-19, SDK-3).

A sampler created with ``record_stability_info=True`` records, for every sequence it returns, the
request's prompt tokens, the sampled tokens and the sampler's own logprob of each sampled token
(the raw temperature-1 value of SMP-3), under the sequence's ``sequence_id``. Records belong to
the ``ServiceClient`` (a server scopes them per tenant) and expire one day after their last use.

A ``stable_reinforce`` datum names those sequences through its provenance spans
(``Datum.with_provenance``). ``resolve_stable_reinforce`` checks every claim the spans make and
rewrites the datum into the inputs the loss formula reads: ``target_tokens``, ``advantages``,
``logprobs`` = the *recorded* sampler logprobs (so a client's copy cannot drift), and
``sampled_mask`` (1 at the positions under a ``SampledProvenanceSpan``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import BadRequestError
from .types import Datum, SampledSequence, TensorData
from .types.provenance import ProvenanceSpans, SampledProvenanceSpan

__all__ = [
    "LOGPROB_MATCH_ATOL",
    "RECORD_TTL_S",
    "RecordedSequence",
    "StabilityRecords",
    "check_span_tiling",
    "resolve_stable_reinforce",
]

#: How long a recorded sequence stays usable after its last use (tinker: one day).
RECORD_TTL_S = 24 * 3600.0
#: A ``logprobs`` input at a sampled position must equal the recorded value within this much
#: (plus 1e-6 relative): the client's copy went through float32, nothing else may change it.
LOGPROB_MATCH_ATOL = 1e-4


@dataclass(frozen=True)
class RecordedSequence:
    """What a recording sampler kept for one returned sequence."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]


@dataclass
class _Entry:
    sequence: RecordedSequence
    last_used: float = field(default=0.0)


class StabilityRecords:
    """Recorded sequences by ``sequence_id``; thread-safe. ``clock`` is injectable for tests."""

    def __init__(self, ttl_s: float = RECORD_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def record(self, prompt: Sequence[int], sequences: Sequence[SampledSequence]) -> None:
        """Keep every sequence of one sample response (each must have a ``sequence_id`` and logprobs)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            for seq in sequences:
                logprobs = tuple(float(v) for v in (seq.logprobs or []))
                if len(logprobs) != len(seq.tokens):
                    raise ValueError(f"sequence {seq.sequence_id!r} has no logprob per sampled token to record")
                self._entries[seq.sequence_id] = _Entry(
                    RecordedSequence(tuple(prompt), tuple(seq.tokens), logprobs), now
                )

    def get(self, sequence_id: str) -> RecordedSequence | None:
        """The recorded sequence (its expiry restarts), or ``None`` if unknown or expired."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(sequence_id)
            if entry is None:
                return None
            entry.last_used = now
            return entry.sequence

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _expire(self, now: float) -> None:
        dead = [sid for sid, e in self._entries.items() if now - e.last_used >= self.ttl_s]
        for sid in dead:
            del self._entries[sid]


def check_span_tiling(i: int, datum: Datum) -> None:
    """LOSS-17 for every loss: a datum's spans, when present, tile its input tokens and its
    ``target_tokens`` rows exactly."""
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        return
    targets = datum.loss_fn_inputs.get("target_tokens")
    rows = datum.model_input.length if targets is None else targets.resolved_shape[0]
    for name, spans, expected in (
        ("model_input_spans", datum.model_input_spans, datum.model_input.length),
        ("loss_fn_input_spans", datum.loss_fn_input_spans, rows),
    ):
        total = sum(span.length for span in spans)
        if total != expected:
            raise BadRequestError(
                f"data[{i}].{name}",
                f"the spans cover {total} positions but the field has {expected}; they must tile it",
            )


def _claimed(
    field: str, spans: ProvenanceSpans, records: StabilityRecords
) -> list[tuple[int, bool, RecordedSequence, int]]:
    """Per covered position: (span index, sampled?, recorded sequence, index into its prompt/tokens)."""
    out: list[tuple[int, bool, RecordedSequence, int]] = []
    for j, span in enumerate(spans):
        where = f"{field}[{j}]"
        seq = records.get(span.sequence_id)
        if seq is None:
            raise BadRequestError(
                f"{where}.sequence_id",
                f"no sequence {span.sequence_id!r} was sampled with record_stability_info=True in this session "
                "(or its record expired)",
            )
        sampled = isinstance(span, SampledProvenanceSpan)
        source = seq.tokens if sampled else seq.prompt
        if span.offset + span.length > len(source):
            what = "sampled tokens" if sampled else "prompt tokens"
            raise BadRequestError(
                where,
                f"claims positions [{span.offset}, {span.offset + span.length}) of {span.sequence_id!r}'s {what}, "
                f"which has {len(source)}",
            )
        out.extend((j, sampled, seq, span.offset + k) for k in range(span.length))
    return out


def resolve_stable_reinforce(i: int, datum: Datum, records: StabilityRecords) -> Datum:
    """Check datum ``i``'s provenance against ``records`` (LOSS-17, LOSS-18) and return it with
    the inputs the formula reads (module docstring). ``BadRequestError`` names the span or
    input at fault; nothing is recorded or changed."""
    prefix = f"data[{i}]"
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        raise BadRequestError(
            f"{prefix}.loss_fn_input_spans",
            "stable_reinforce needs provenance on every datum (Datum.with_provenance naming sequences sampled "
            "with record_stability_info=True)",
        )
    check_span_tiling(i, datum)
    tokens = datum.model_input.to_ints()
    for pos, (j, sampled, seq, k) in enumerate(
        _claimed(f"{prefix}.model_input_spans", datum.model_input_spans, records)
    ):
        recorded = (seq.tokens if sampled else seq.prompt)[k]
        if tokens[pos] != recorded:
            raise BadRequestError(
                f"{prefix}.model_input_spans[{j}]",
                f"input token {tokens[pos]} at position {pos} is not the recorded token {recorded}",
            )
    inputs = datum.loss_fn_inputs
    targets = inputs["target_tokens"].to_numpy()
    n = len(targets)
    advantages = inputs["advantages"].to_numpy().astype(np.float64)
    given = inputs["logprobs"].to_numpy().astype(np.float64) if "logprobs" in inputs else None
    q = np.zeros(n, dtype=np.float64)
    mask = np.zeros(n, dtype=np.float64)
    for pos, (j, sampled, seq, k) in enumerate(
        _claimed(f"{prefix}.loss_fn_input_spans", datum.loss_fn_input_spans, records)
    ):
        if not sampled:
            continue
        if int(targets[pos]) != seq.tokens[k]:
            raise BadRequestError(
                f"{prefix}.loss_fn_input_spans[{j}]",
                f"target token {int(targets[pos])} at position {pos} is not the recorded sampled token {seq.tokens[k]}",
            )
        q[pos], mask[pos] = seq.logprobs[k], 1.0
    for name, values in (("advantages", advantages), ("logprobs", given)):
        if values is None:
            continue
        stray = np.flatnonzero((mask == 0) & (values != 0))
        if stray.size:
            raise BadRequestError(
                f"{prefix}.loss_fn_inputs.{name}",
                f"is {values[stray[0]]} at position {int(stray[0])}, which no SampledProvenanceSpan covers; "
                "stable_reinforce trains only sampled positions, so it must be 0 there",
            )
    if given is not None:
        drift = np.flatnonzero((mask == 1) & (np.abs(given - q) > LOGPROB_MATCH_ATOL + 1e-6 * np.abs(q)))
        if drift.size:
            p = int(drift[0])
            raise BadRequestError(
                f"{prefix}.loss_fn_inputs.logprobs",
                f"is {given[p]} at position {p} but the sampler recorded {q[p]} for that token",
            )
    return Datum(
        model_input=datum.model_input,
        loss_fn_inputs={
            "target_tokens": inputs["target_tokens"],
            "advantages": inputs["advantages"],
            "logprobs": TensorData(data=q.tolist(), dtype="float32", shape=[n]),
            "sampled_mask": TensorData(data=mask.tolist(), dtype="float32", shape=[n]),
        },
    )
