"""Local checkpoint storage: ``tinker://`` paths resolved under one directory (spec CKPT).

Layout: ``<root>/<run>/<weights|sampler_weights>/<name>/`` holding the backend's files plus
``checkpoint.json`` (metadata written by this module). Writes are atomic: files go to a temporary
folder under ``<root>/.tmp`` and are renamed into place only when complete, so a crash never
leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConflictError, NotFoundError
from .types import Checkpoint, ParsedCheckpointTinkerPath, TrainingRun
from .types.checkpoint import KIND_OF_SEGMENT

__all__ = ["CheckpointStore", "default_checkpoint_dir", "METADATA_FILE"]

METADATA_FILE = "checkpoint.json"


def default_checkpoint_dir() -> Path:
    """``$TINKER_STD_CHECKPOINT_DIR``, else ``~/.cache/tinker-std/checkpoints``."""
    env = os.environ.get("TINKER_STD_CHECKPOINT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tinker-std" / "checkpoints"


class CheckpointStore:
    """Resolves checkpoint paths to folders and manages them."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_dir()

    def directory(self, path: ParsedCheckpointTinkerPath) -> Path:
        segment, name = path.checkpoint_id.split("/", 1)
        return self.root / path.training_run_id / segment / name

    def exists(self, path: ParsedCheckpointTinkerPath) -> bool:
        return (self.directory(path) / METADATA_FILE).is_file()

    def check_writable(self, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """``ConflictError`` if ``path`` exists and ``overwrite`` is false."""
        if not overwrite and self.exists(path):
            raise ConflictError(f"checkpoint {path.tinker_path} already exists; pass overwrite=True to replace it")

    @contextmanager
    def writing(self, path: ParsedCheckpointTinkerPath, overwrite: bool, metadata: dict[str, Any]) -> Iterator[Path]:
        """Yield a temporary folder to write into; on success it atomically becomes ``path``."""
        self.check_writable(path, overwrite)
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=tmp_root))
        try:
            yield staging
            record = {
                **metadata,
                "tinker_path": path.tinker_path,
                "checkpoint_type": path.checkpoint_type,
                "time": datetime.now(UTC).isoformat(),
            }
            (staging / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            final = self.directory(path)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                self.check_writable(path, overwrite)
                trash = Path(tempfile.mkdtemp(dir=tmp_root))
                os.replace(final, trash / "old")
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def read_metadata(self, path: ParsedCheckpointTinkerPath) -> dict[str, Any]:
        """The metadata written with ``path``; ``NotFoundError`` when there is no such checkpoint."""
        file = self.directory(path) / METADATA_FILE
        if not file.is_file():
            raise NotFoundError(f"no checkpoint at {path.tinker_path} (looked in {file.parent})")
        data: dict[str, Any] = json.loads(file.read_text())
        return data

    def list_training_runs(self) -> list[TrainingRun]:
        runs = []
        for run_dir in sorted(p for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")):
            checkpoints = self.list_checkpoints(run_dir.name)
            if not checkpoints:
                continue
            meta = self.read_metadata(ParsedCheckpointTinkerPath.from_tinker_path(checkpoints[-1].tinker_path))
            runs.append(
                TrainingRun(
                    training_run_id=run_dir.name,
                    base_model=str(meta.get("base_model", "")),
                    lora_rank=meta.get("lora", {}).get("rank"),
                    last_checkpoint_time=max(c.time for c in checkpoints),
                )
            )
        return runs

    def list_checkpoints(self, training_run_id: str) -> list[Checkpoint]:
        """Checkpoints of one run, oldest first."""
        found = []
        for segment in KIND_OF_SEGMENT:
            for folder in (self.root / training_run_id / segment).glob("*"):
                meta_file = folder / METADATA_FILE
                if not meta_file.is_file():
                    continue
                meta = json.loads(meta_file.read_text())
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                found.append(
                    Checkpoint(
                        checkpoint_id=f"{segment}/{folder.name}",
                        checkpoint_type=KIND_OF_SEGMENT[segment],
                        time=datetime.fromisoformat(meta["time"]),
                        tinker_path=meta["tinker_path"],
                        size_bytes=size,
                        user_metadata=meta.get("user_metadata"),
                    )
                )
        return sorted(found, key=lambda c: c.time)

    def delete(self, path: ParsedCheckpointTinkerPath) -> None:
        """Delete one checkpoint; ``NotFoundError`` if it does not exist."""
        if not self.exists(path):
            raise NotFoundError(f"no checkpoint at {path.tinker_path}")
        shutil.rmtree(self.directory(path))
