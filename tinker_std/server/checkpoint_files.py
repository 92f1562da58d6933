"""The backend's checkpoints behind the server's records.

The SDK sees a checkpoint as ``tinker://{model_id}/{weights|sampler_weights}/{name}`` (the
server's record); the backend stores it under a path of its own (``backend_path``). This module
goes from one to the other: ``resolve`` finds the backend path of a tenant's wire path, ``size``
measures a stored checkpoint, ``delete`` removes a record and then its files, ``delete_expired``
enforces TTLs (the reaper calls it).
"""

from __future__ import annotations

import time
from typing import Any

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError, NotFoundError
from tinker_std.types import ParsedCheckpointTinkerPath

from .records import CheckpointRecord, ServerRecords

__all__ = ["CheckpointFiles"]


class CheckpointFiles:
    """The records of ``records`` and the files of ``service``'s backend, kept in step."""

    def __init__(self, service: ServiceClient, records: ServerRecords) -> None:
        self.service = service
        self.records = records

    def resolve(self, tenant: str, path: Any, field_name: str) -> str:
        """The backend path behind a wire ``tinker://`` path of ``tenant``; ``BadRequestError``
        on ``field_name`` for a malformed path, ``NotFoundError`` if the tenant has no such
        checkpoint."""
        try:
            parsed = ParsedCheckpointTinkerPath.from_tinker_path(path)
        except ValueError as exc:
            raise BadRequestError(field_name, str(exc)) from None
        record = self.records.checkpoint(tenant, parsed.training_run_id, parsed.checkpoint_id)
        if record is None:
            raise NotFoundError(f"no checkpoint at {path}")
        return record.backend_path

    def size(self, backend_path: str) -> int | None:
        """Bytes on disk of a stored checkpoint; ``None`` if the backend keeps no local files."""
        store = getattr(self.service.backend, "checkpoint_store", None)
        if store is None:
            return None
        try:
            folder = store.directory(ParsedCheckpointTinkerPath.from_tinker_path(backend_path))
            return int(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
        except Exception:
            return None

    def delete_files(self, backend_path: str) -> None:
        """Delete a stored checkpoint's files (nothing if they are already gone)."""
        store = getattr(self.service.backend, "checkpoint_store", None)
        if store is None:
            return
        try:
            store.delete(ParsedCheckpointTinkerPath.from_tinker_path(backend_path))
        except NotFoundError:
            pass

    def delete(self, record: CheckpointRecord) -> None:
        """Delete a checkpoint: its record first (the name goes at once), then its files."""
        self.records.delete_checkpoint(record.tenant, record.run_id, record.checkpoint_id)
        self.delete_files(record.backend_path)

    def delete_expired(self, now: float | None = None) -> int:
        """Delete every checkpoint whose TTL has passed; how many."""
        expired = self.records.expired(time.time() if now is None else now)
        for record in expired:
            self.delete(record)
        return len(expired)
