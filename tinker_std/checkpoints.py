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

Integrity (CKPT-14..CKPT-16): ``checkpoint.json`` records the sha256 and size of every file of the
checkpoint (``content_digest``), and ``read_metadata`` (which every load goes through) verifies
them, so a damaged or truncated checkpoint is a ``CorruptCheckpointError`` naming its ``tinker://``
path. Running out of space while saving is a ``StorageFullError`` and leaves the previous version
intact; no error names a file-system path. Staging folders are named after the host and process
that made them, and those of processes no longer alive are removed when a store is opened.

TTL and metadata (CKPT-13): ``annotate`` records a checkpoint's ``expires_at`` (unix seconds) and
``user_metadata`` in its ``checkpoint.json`` (outside the content digest); an expired checkpoint is
deleted when next seen (listing, load, existence check), so it is never listed or loaded.
``write_run_metadata`` keeps a run's ``user_metadata`` in ``<run>/run.json``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import (
    ConflictError,
    CorruptCheckpointError,
    NotFoundError,
    RequestFailedError,
    StorageFullError,
    TinkerError,
)
from .types import Checkpoint, ParsedCheckpointTinkerPath, TrainingRun
from .types.checkpoint import KIND_OF_SEGMENT

__all__ = ["CheckpointStore", "default_checkpoint_dir", "METADATA_FILE"]

METADATA_FILE = "checkpoint.json"
RUN_FILE = "run.json"
VERSIONS_DIR = ".versions"
TMP_DIR = ".tmp"
DIGEST_KEY = "content_digest"
#: Staging folders of another host (or of a live process whose pid was reused) this old are removed.
STALE_STAGING_S = 24 * 3600.0
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def content_digest(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` but the metadata file, by relative path."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(f for f in folder.rglob("*") if f.is_file() and f.name != METADATA_FILE):
        sha = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        files[file.relative_to(folder).as_posix()] = {"sha256": sha.hexdigest(), "size": file.stat().st_size}
    return files


def _staging_prefix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_checkpoint_dir() -> Path:
    """``$TINKER_STD_CHECKPOINT_DIR``, else ``~/.cache/tinker-std/checkpoints``."""
    env = os.environ.get("TINKER_STD_CHECKPOINT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tinker-std" / "checkpoints"


class CheckpointStore:
    """Resolves checkpoint paths to folders and manages them."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_dir()
        self.clean_staging()

    def clean_staging(self) -> list[str]:
        """Remove staging folders left in ``.tmp`` by killed saves: those of this host whose
        process is gone, and any older than ``STALE_STAGING_S``. Returns the names removed."""
        tmp_root = self.root / TMP_DIR
        if not tmp_root.is_dir():
            return []
        host = socket.gethostname()
        removed = []
        for entry in tmp_root.iterdir():
            match = re.fullmatch(r"(.+)-(\d+)-[^-]+", entry.name)
            try:
                age = time.time() - entry.lstat().st_mtime
            except OSError:
                continue
            dead = match is not None and match[1] == host and not _pid_alive(int(match[2]))
            unowned = match is None or match[1] != host
            if dead or (unowned and age > STALE_STAGING_S) or age > STALE_STAGING_S * 7:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

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
        """Whether ``path`` names a checkpoint (an expired one is deleted and does not exist)."""
        file = self.directory(path) / METADATA_FILE
        if not file.is_file():
            return False
        return not self._purge_if_expired(path, _read_json(file))

    # -- TTL and metadata (CKPT-13) -------------------------------------------------------------

    def annotate(
        self, path: ParsedCheckpointTinkerPath, expires_at: float | None, user_metadata: dict[str, str] | None
    ) -> None:
        """Record ``expires_at`` and ``user_metadata`` in the metadata of the saved ``path``
        (written to a new file renamed over the old one)."""
        file = self.directory(path) / METADATA_FILE
        data = _read_json(file)
        data.update(expires_at=expires_at, user_metadata=user_metadata)
        staging = file.with_name(f".{METADATA_FILE}.{uuid.uuid4().hex[:8]}")
        staging.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(staging, file)

    def _purge_if_expired(self, path: ParsedCheckpointTinkerPath, meta: dict[str, Any]) -> bool:
        expires_at = meta.get("expires_at")
        if not isinstance(expires_at, (int, float)) or expires_at > time.time():
            return False
        link, folder = self.link(path), self.directory(path)
        if link.is_symlink():
            link.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def write_run_metadata(self, training_run_id: str, user_metadata: dict[str, str]) -> None:
        """Keep ``user_metadata`` of a training run (``TrainingRun.user_metadata`` in listings)."""
        folder = self.root / training_run_id
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{RUN_FILE}.{uuid.uuid4().hex[:8]}"
        staging.write_text(json.dumps({"user_metadata": user_metadata}))
        os.replace(staging, folder / RUN_FILE)

    def run_metadata(self, training_run_id: str) -> dict[str, str] | None:
        file = self.root / training_run_id / RUN_FILE
        if not file.is_file():
            return None
        value = _read_json(file).get("user_metadata")
        return value if isinstance(value, dict) else None

    def check_writable(self, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """``ConflictError`` if ``path`` exists and ``overwrite`` is false."""
        if not overwrite and self.exists(path):
            raise ConflictError(f"checkpoint {path.tinker_path} already exists; pass overwrite=True to replace it")

    @contextmanager
    def writing(self, path: ParsedCheckpointTinkerPath, overwrite: bool, metadata: dict[str, Any]) -> Iterator[Path]:
        """Yield a temporary folder to write into; on success it atomically becomes ``path``."""
        self.check_writable(path, overwrite)
        staging: Path | None = None
        try:
            tmp_root = self.root / TMP_DIR
            tmp_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=tmp_root, prefix=_staging_prefix()))
            yield staging
            record = {
                **metadata,
                "tinker_path": path.tinker_path,
                "checkpoint_type": path.checkpoint_type,
                "time": datetime.now(UTC).isoformat(),
                DIGEST_KEY: {"algorithm": "sha256", "files": content_digest(staging)},
            }
            with open(staging / METADATA_FILE, "w") as fh:
                fh.write(json.dumps(record, indent=2, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            self.check_writable(path, overwrite)
            self._commit(staging, self.link(path))
        except TinkerError:
            raise
        except Exception as exc:
            # CKPT-15/16: typed, and never a file-system path (OSError texts name one)
            if self._out_of_space(exc):
                raise StorageFullError(path.tinker_path) from None
            if not isinstance(exc, OSError):
                raise  # the backend's own error, as it raised it
            raise RequestFailedError(
                f"could not save {path.tinker_path}: {self.scrub(exc)}", category="server"
            ) from None
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _out_of_space(self, exc: BaseException) -> bool:
        """Whether ``exc`` (or what caused it: ``torch.save`` wraps the OSError in a RuntimeError
        without errno) comes from a full file system or quota."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, OSError) and seen.errno in _FULL:
                return True
            seen = seen.__cause__ or seen.__context__
        try:
            return shutil.disk_usage(self.root).free < 1 << 20
        except OSError:
            return False

    def scrub(self, exc: BaseException) -> str:
        """``exc``'s type and message with file-system paths taken out (CKPT-16)."""
        if isinstance(exc, OSError) and exc.errno:
            return f"{type(exc).__name__}: {os.strerror(exc.errno)}"
        text = str(exc)
        for root in sorted({str(self.root.resolve()), str(self.root)}, key=len, reverse=True):
            text = text.replace(root, "<checkpoint_dir>")
        return f"{type(exc).__name__}: {text}"

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

    def read_metadata(self, path: ParsedCheckpointTinkerPath, verify: bool = True) -> dict[str, Any]:
        """The metadata written with ``path``; ``NotFoundError`` when there is no such checkpoint.

        With ``verify`` (what every load does) the files are checked against the recorded digest
        first: ``CorruptCheckpointError`` naming ``path`` when one is missing, truncated or
        changed, or the metadata itself is unreadable (CKPT-14). Checkpoints written before
        digests existed carry none and are not checked."""
        folder = self.directory(path)
        file = folder / METADATA_FILE
        if not file.is_file():
            raise NotFoundError(f"no checkpoint at {path.tinker_path}")
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptCheckpointError(
                path.tinker_path, f"its metadata is unreadable ({type(exc).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise CorruptCheckpointError(path.tinker_path, "its metadata is not an object")
        if self._purge_if_expired(path, data):
            raise NotFoundError(f"no checkpoint at {path.tinker_path} (it expired)")
        recorded = data.get(DIGEST_KEY)
        if verify and isinstance(recorded, dict):
            try:
                actual = content_digest(folder)
            except OSError as exc:
                raise CorruptCheckpointError(
                    path.tinker_path, f"a file is unreadable ({os.strerror(exc.errno or 0)})"
                ) from None
            for name, want in sorted(recorded.get("files", {}).items()):
                got = actual.get(name)
                if got is None:
                    raise CorruptCheckpointError(path.tinker_path, f"file {name} is missing")
                if got["size"] != want.get("size"):
                    raise CorruptCheckpointError(
                        path.tinker_path, f"file {name} has {got['size']} bytes, {want.get('size')} were written"
                    )
                if got["sha256"] != want.get("sha256"):
                    raise CorruptCheckpointError(path.tinker_path, f"file {name} does not match its sha256 digest")
        return data

    def list_training_runs(self) -> list[TrainingRun]:
        runs = []
        for run_dir in sorted(p for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")):
            checkpoints = self.list_checkpoints(run_dir.name)
            if not checkpoints:
                continue
            meta = self.read_metadata(
                ParsedCheckpointTinkerPath.from_tinker_path(checkpoints[-1].tinker_path), verify=False
            )
            runs.append(
                TrainingRun(
                    training_run_id=run_dir.name,
                    base_model=str(meta.get("base_model", "")),
                    lora_rank=meta.get("lora", {}).get("rank"),
                    last_checkpoint_time=max(c.time for c in checkpoints),
                    user_metadata=self.run_metadata(run_dir.name),
                )
            )
        return runs

    def user_checkpoints_page(self, limit: int, offset: int) -> tuple[list[Checkpoint], int]:
        """One page of every run's checkpoints, oldest first (ties by tinker path), and how many
        there are (``RestClient.list_user_checkpoints``; a store behind a server pages itself)."""
        found: list[Checkpoint] = []
        for run in self.list_training_runs():
            found += self.list_checkpoints(run.training_run_id)
        found.sort(key=lambda c: (c.time, c.tinker_path))
        return found[offset : offset + limit], len(found)

    def list_checkpoints(self, training_run_id: str) -> list[Checkpoint]:
        """Checkpoints of one run, oldest first."""
        found = []
        for segment in KIND_OF_SEGMENT:
            for folder in (self.root / training_run_id / segment).glob("*"):
                meta_file = folder / METADATA_FILE
                if folder.name.startswith(".") or not meta_file.is_file():
                    continue
                meta = json.loads(meta_file.read_text())
                parsed = ParsedCheckpointTinkerPath.from_tinker_path(meta["tinker_path"])
                if self._purge_if_expired(parsed, meta):
                    continue
                expires_at = meta.get("expires_at")
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                found.append(
                    Checkpoint(
                        checkpoint_id=f"{segment}/{folder.name}",
                        checkpoint_type=KIND_OF_SEGMENT[segment],
                        time=datetime.fromisoformat(meta["time"]),
                        tinker_path=meta["tinker_path"],
                        size_bytes=size,
                        user_metadata=meta.get("user_metadata"),
                        expires_at=None if expires_at is None else datetime.fromtimestamp(expires_at, UTC),
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


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
