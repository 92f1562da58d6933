"""Durable records of the server's training runs and checkpoints, in SQLite.

The wire protocol names a training run by the SDK-facing model id (``"{session}:train:{n}"``) and
a checkpoint by ``tinker://<that id>/<kind>/<name>``. The backend keeps its own run ids and paths,
so every checkpoint record stores the backend path it lives at; the REST listings, loads and
samplers resolve wire paths through these records. Each row names its tenant: a record of another
tenant is invisible (``None`` / not listed). Writes commit at once (WAL journal, synchronous=NORMAL),
so a server process killed at any point (kill -9 included) and started again on the same database
lists what it had saved; a power loss or OS crash may lose the last commits (no fsync per commit).

A run's ``last_request`` time is the exception: ``touch_run`` only notes it in memory (it is called
on a training step's path, where a SQLite write cost 0.4 ms of the step), and the notes are written
in one transaction before any read of these tables and on ``flush`` (the server's reaper tick) and
``close``. A kill -9 therefore loses at most the touches since the last read or tick: the run then
lists an older ``last_request_time``, never a newer one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CheckpointRecord", "RunRecord", "ServerRecords"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, base_model TEXT NOT NULL, lora_rank INTEGER,
    train_mlp INTEGER, train_attn INTEGER, train_unembed INTEGER,
    user_metadata TEXT, created REAL NOT NULL, last_request REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    backend_path TEXT NOT NULL, time REAL NOT NULL, size_bytes INTEGER, public INTEGER NOT NULL DEFAULT 0,
    expires_at REAL, user_metadata TEXT, PRIMARY KEY (run_id, checkpoint_id)
);
"""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    tenant: str
    base_model: str
    lora_rank: int | None
    train_mlp: bool | None
    train_attn: bool | None
    train_unembed: bool | None
    user_metadata: dict[str, str] | None
    created: float
    last_request: float


@dataclass(frozen=True)
class CheckpointRecord:
    run_id: str
    checkpoint_id: str  # "<weights|sampler_weights>/<name>"
    tenant: str
    kind: str  # "training" | "sampler"
    backend_path: str
    time: float
    size_bytes: int | None
    public: bool
    expires_at: float | None
    user_metadata: dict[str, str] | None

    @property
    def tinker_path(self) -> str:
        return f"tinker://{self.run_id}/{self.checkpoint_id}"


class ServerRecords:
    """The run and checkpoint tables of one server (``path``: the SQLite file; ``":memory:"`` for none)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}  # run id -> newest request time not yet written
        self._touch_lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit is in the WAL file (the OS's page cache) before the call
            # returns, so it survives a crash or kill -9 of this process; only the checkpoint of
            # the WAL is fsynced, so a power loss or OS crash may lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._write_touches()
            self._db.close()

    def flush(self) -> None:
        """Write the request times ``touch_run`` noted (the reaper's tick calls this)."""
        with self._lock:
            self._write_touches()

    def _write_touches(self) -> None:
        """Under ``_lock``: the noted request times, in one transaction."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if touched:
            with self._db:  # one transaction (BEGIN ... COMMIT) for all of them
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE runs SET last_request = ? WHERE run_id = ?", [(t, r) for r, t in touched.items()]
                )

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            self._write_touches()
            return list(self._db.execute(sql, args).fetchall())

    def _write(self, sql: str, *args: Any) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # -- runs -------------------------------------------------------------------------------

    def add_run(
        self,
        run_id: str,
        tenant: str,
        base_model: str,
        lora_rank: int | None,
        train: tuple[bool | None, bool | None, bool | None] = (None, None, None),
        user_metadata: dict[str, str] | None = None,
    ) -> None:
        now = time.time()
        self._write(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_id,
            tenant,
            base_model,
            lora_rank,
            *train,
            json.dumps(user_metadata) if user_metadata else None,
            now,
            now,
        )

    def touch_run(self, run_id: str) -> None:
        """Note a request to ``run_id`` now; written before the next read (see the module doc)."""
        now = time.time()
        with self._touch_lock:
            self._touched[run_id] = now

    def run(self, tenant: str, run_id: str) -> RunRecord | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ? AND tenant = ?", run_id, tenant)
        return _run(rows[0]) if rows else None

    def runs(self, tenant: str, limit: int, offset: int) -> tuple[list[RunRecord], int]:
        rows = self._rows(
            "SELECT * FROM runs WHERE tenant = ? ORDER BY created, run_id LIMIT ? OFFSET ?", tenant, limit, offset
        )
        total = self._rows("SELECT COUNT(*) AS n FROM runs WHERE tenant = ?", tenant)[0]["n"]
        return [_run(r) for r in rows], int(total)

    # -- checkpoints ------------------------------------------------------------------------

    def add_checkpoint(
        self,
        run_id: str,
        checkpoint_id: str,
        tenant: str,
        kind: str,
        backend_path: str,
        size_bytes: int | None = None,
        expires_at: float | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            run_id,
            checkpoint_id,
            tenant,
            kind,
            backend_path,
            time.time(),
            size_bytes,
            expires_at,
            json.dumps(user_metadata) if user_metadata else None,
        )

    def checkpoint(self, tenant: str, run_id: str, checkpoint_id: str) -> CheckpointRecord | None:
        rows = self._rows(
            "SELECT * FROM checkpoints WHERE run_id = ? AND checkpoint_id = ? AND tenant = ?",
            run_id,
            checkpoint_id,
            tenant,
        )
        return _checkpoint(rows[0]) if rows else None

    def checkpoints(
        self, tenant: str, run_id: str | None = None, limit: int = -1, offset: int = 0
    ) -> tuple[list[CheckpointRecord], int]:
        where, args = ("tenant = ? AND run_id = ?", (tenant, run_id)) if run_id else ("tenant = ?", (tenant,))
        rows = self._rows(
            f"SELECT * FROM checkpoints WHERE {where} ORDER BY time, run_id, checkpoint_id LIMIT ? OFFSET ?",
            *args,
            limit,
            offset,
        )
        total = self._rows(f"SELECT COUNT(*) AS n FROM checkpoints WHERE {where}", *args)[0]["n"]
        return [_checkpoint(r) for r in rows], int(total)

    def delete_checkpoint(self, tenant: str, run_id: str, checkpoint_id: str) -> None:
        self._write(
            "DELETE FROM checkpoints WHERE run_id = ? AND checkpoint_id = ? AND tenant = ?",
            run_id,
            checkpoint_id,
            tenant,
        )

    def set_public(self, tenant: str, run_id: str, checkpoint_id: str, public: bool) -> None:
        self._write(
            "UPDATE checkpoints SET public = ? WHERE run_id = ? AND checkpoint_id = ? AND tenant = ?",
            int(public),
            run_id,
            checkpoint_id,
            tenant,
        )

    def set_expiry(self, tenant: str, run_id: str, checkpoint_id: str, expires_at: float | None) -> None:
        self._write(
            "UPDATE checkpoints SET expires_at = ? WHERE run_id = ? AND checkpoint_id = ? AND tenant = ?",
            expires_at,
            run_id,
            checkpoint_id,
            tenant,
        )

    def expired(self, now: float) -> list[CheckpointRecord]:
        rows = self._rows("SELECT * FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at <= ?", now)
        return [_checkpoint(r) for r in rows]


def _run(row: sqlite3.Row) -> RunRecord:
    def flag(v: Any) -> bool | None:
        return None if v is None else bool(v)

    return RunRecord(
        run_id=row["run_id"],
        tenant=row["tenant"],
        base_model=row["base_model"],
        lora_rank=row["lora_rank"],
        train_mlp=flag(row["train_mlp"]),
        train_attn=flag(row["train_attn"]),
        train_unembed=flag(row["train_unembed"]),
        user_metadata=json.loads(row["user_metadata"]) if row["user_metadata"] else None,
        created=row["created"],
        last_request=row["last_request"],
    )


def _checkpoint(row: sqlite3.Row) -> CheckpointRecord:
    return CheckpointRecord(
        run_id=row["run_id"],
        checkpoint_id=row["checkpoint_id"],
        tenant=row["tenant"],
        kind=row["kind"],
        backend_path=row["backend_path"],
        time=row["time"],
        size_bytes=row["size_bytes"],
        public=bool(row["public"]),
        expires_at=row["expires_at"],
        user_metadata=json.loads(row["user_metadata"]) if row["user_metadata"] else None,
    )
