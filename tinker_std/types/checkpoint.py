"""Checkpoint paths ``tinker://<run>/<kind>/<name>`` and checkpoint records."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from ._base import ResponseModel

__all__ = [
    "CheckpointType",
    "Checkpoint",
    "CheckpointsListResponse",
    "Cursor",
    "ParsedCheckpointTinkerPath",
    "TrainingRun",
    "TrainingRunsResponse",
    "KIND_OF_SEGMENT",
]

#: As in tinker 0.38. The library writes ``training`` and ``sampler`` checkpoints; ``external``
#: (``save_weights_external``, a peft adapter folder) is written by the tinker-std server only
#: (``tinker_std/server/external_weights.py``), so in-process paths never name it.
CheckpointType = Literal["training", "sampler", "external"]

#: Path segment -> checkpoint type. ``weights`` holds adapter + optimizer state (``save_state``),
#: ``sampler_weights`` holds adapter weights only (``save_weights_for_sampler``).
KIND_OF_SEGMENT: dict[str, CheckpointType] = {"weights": "training", "sampler_weights": "sampler"}
SEGMENT_OF_KIND: dict[CheckpointType, str] = {v: k for k, v in KIND_OF_SEGMENT.items()}

_NAME = re.compile(r"^[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*\Z")  # \Z: "$" would also match before a trailing "\n"


#: Longest run id or checkpoint name (CKPT-17): a file name of at most 255 bytes must hold it plus
#: the checkpoint store's version suffix.
MAX_NAME_LENGTH = 200


def check_name(name: str, what: str) -> None:
    """Raise ValueError unless ``name`` is a valid run id or checkpoint name (no ``/``, not ``.``/``..``,
    at most ``MAX_NAME_LENGTH`` characters)."""
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    if not name or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} is not valid: use letters, digits and . _ : - (no '/', not empty, not starting with '.')"
        )


class ParsedCheckpointTinkerPath(ResponseModel):
    """A parsed ``tinker://<training_run_id>/<weights|sampler_weights>/<name>`` path."""

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str  # "<segment>/<name>", as in tinker

    @property
    def name(self) -> str:
        return self.checkpoint_id.split("/", 1)[1]

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        if not isinstance(tinker_path, str) or not tinker_path.startswith("tinker://"):
            raise ValueError(f"checkpoint path {tinker_path!r} must start with 'tinker://'")
        parts = tinker_path[len("tinker://") :].split("/")
        if len(parts) != 3:
            raise ValueError(f"checkpoint path {tinker_path!r} must be tinker://<run>/<kind>/<name>")
        run, segment, name = parts
        if segment not in KIND_OF_SEGMENT:
            raise ValueError(
                f"checkpoint path {tinker_path!r} has kind {segment!r}; expected one of {sorted(KIND_OF_SEGMENT)}"
            )
        check_name(run, "training run id")
        check_name(name, "checkpoint name")
        return cls(
            tinker_path=tinker_path,
            training_run_id=run,
            checkpoint_type=KIND_OF_SEGMENT[segment],
            checkpoint_id=f"{segment}/{name}",
        )

    @classmethod
    def build(cls, run_id: str, kind: CheckpointType, name: str) -> ParsedCheckpointTinkerPath:
        return cls.from_tinker_path(f"tinker://{run_id}/{SEGMENT_OF_KIND[kind]}/{name}")


class Checkpoint(ResponseModel):
    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None


class TrainingRun(ResponseModel):
    """A training run, with the fields of tinker 0.38's ``TrainingRun``. In process the owner is
    ``"local"`` and the run is known from its checkpoints: ``last_request_time`` is its newest
    checkpoint's time. ``last_checkpoint_time`` is tinker-std 0.1's name for that time."""

    training_run_id: str
    base_model: str
    model_owner: str = "local"
    is_lora: bool = True
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: datetime | None = None
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None
    last_checkpoint_time: datetime | None = None


class Cursor(ResponseModel):
    """Where a page of a listing starts, its size, and how many items there are in all."""

    offset: int
    limit: int
    total_count: int


class CheckpointsListResponse(ResponseModel):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class TrainingRunsResponse(ResponseModel):
    training_runs: list[TrainingRun]
    cursor: Cursor
