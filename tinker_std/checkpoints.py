"""Local checkpoint storage: ``tinker://`` paths resolved under one directory (spec CKPT).

Layout: ``<root>/<run>/<weights|sampler_weights>/<name>`` is a symbolic link to a folder
``.versions/<name>.<id>`` beside it, holding the backend's files plus ``checkpoint.json`` (metadata
written by this module). Writes are atomic, overwrites included: files go to a temporary folder under
``<root>/.tmp``, which is renamed to a new version folder only when complete; then a new link
replaces the old one in one ``rename``, and only after that is the previous version deleted. At every
instant the name resolves to the old checkpoint or to the new one, whole, whatever kills the process.
(Checkpoint names cannot start with a dot, so ``.versions`` and temporary links never collide with
one. A checkpoint folder written by tinker-std before 0.1.1, a plain folder under the name, is moved
into ``.versions`` when first overwritten; only that one move is not atomic.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
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
VERSIONS_DIR = ".versions"


def default_checkpoint_dir() -> Path:
    """``$TINKER_STD_CHECKPOINT_DIR``, else ``~/.cache/tinker-std/checkpoints``."""
    env = os.environ.get("TINKER_STD_CHECKPOINT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tinker-std" / "checkpoints"


class CheckpointStore:
    """Resolves checkpoint paths to folders and manages them."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_dir()

    def link(self, path: ParsedCheckpointTinkerPath) -> Path:
        """Where the name of ``path`` lives: a link to its current version folder."""
        segment, name = path.checkpoint_id.split("/", 1)
        return self.root / path.training_run_id / segment / name

    def directory(self, path: ParsedCheckpointTinkerPath) -> Path:
        """The folder holding the current version of ``path`` (readers keep using it while a newer
        version is committed)."""
        link = self.link(path)
        return link.resolve() if link.is_symlink() else link

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
            self.check_writable(path, overwrite)
            self._commit(staging, self.link(path))
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _commit(staging: Path, link: Path) -> None:
        """Make the complete folder ``staging`` the checkpoint under ``link``, atomically."""
        versions = link.parent / VERSIONS_DIR
        versions.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        version = versions / f"{link.name}.{tag}"
        os.replace(staging, version)
        if link.exists() and not link.is_symlink():  # a plain folder written before the versioned layout
            os.replace(link, versions / f"{link.name}.legacy-{tag}")
        pending = link.parent / f".{link.name}.link-{tag}"
        pending.symlink_to(Path(VERSIONS_DIR) / version.name, target_is_directory=True)
        os.replace(pending, link)  # the commit point: rename(2) swaps the link in one step
        # Then the replaced version goes, with whatever an earlier crash left behind for this name.
        own = re.compile(re.escape(link.name) + r"\.(?:legacy-)?[0-9a-f]{12}")
        for stale in versions.iterdir():
            if stale != version and own.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        leftover = re.compile(r"\." + re.escape(link.name) + r"\.link-[0-9a-f]{12}")
        for stale in link.parent.iterdir():
            if leftover.fullmatch(stale.name):
                stale.unlink(missing_ok=True)

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
                if folder.name.startswith(".") or not meta_file.is_file():
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
        link, folder = self.link(path), self.directory(path)
        if link.is_symlink():
            link.unlink()  # the name goes first: a crash after this leaves only an unreachable folder
        shutil.rmtree(folder)
