"""The backend's checkpoints behind the server's records.

The SDK sees a checkpoint as ``tinker://{model_id}/{weights|sampler_weights}/{name}`` (the
server's record); the backend stores it under a path of its own (``backend_path``). This module
goes from one to the other: ``resolve`` finds the backend path of a tenant's wire path, ``size``
measures a stored checkpoint, ``delete`` removes a record and then its files, ``delete_expired``
enforces TTLs (the reaper calls it). External weights (``external_weights.py``) live outside the
backend's store, under ``external_root``; their records' backend path is ``external://<folder>``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError, NotFoundError
from tinker_std.types import ParsedCheckpointTinkerPath

from .records import CheckpointRecord, ServerRecords

__all__ = ["EXTERNAL_SCHEME", "CheckpointFiles", "external_root"]

EXTERNAL_SCHEME = "external://"


def external_root(service: ServiceClient) -> Path | None:
    """Where external weights are kept: ``.external`` in the backend's checkpoint directory (a
    dot folder, so never taken for a run); ``None`` for a backend without local files."""
    root = getattr(getattr(service.backend, "checkpoint_store", None), "root", None)
    return None if root is None else Path(root) / ".external"


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
        if backend_path.startswith(EXTERNAL_SCHEME):
            root = external_root(self.service)
            folder_id = backend_path[len(EXTERNAL_SCHEME) :]
            if root is not None and folder_id and "/" not in folder_id and not folder_id.startswith("."):
                shutil.rmtree(root / folder_id, ignore_errors=True)
            return
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
