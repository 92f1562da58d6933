"""The REST half of the Tinker API (the SDK's ``RestClient``), over the server's records.

Implemented: training runs (list, get), checkpoints of a run and of the caller (list), delete,
publish / unpublish (a recorded flag: tinker-std serves a checkpoint only to its own tenant),
TTL (the checkpoint is deleted once it expires: the server's reaper calls
``CheckpointFiles.delete_expired``), ``weights_info``, sessions (list, get). The REST endpoints
the server refuses (external weight URLs, session projects, ...) are declared in ``refusals.py``.
Every object is looked up within the caller's tenant: another tenant's is 404.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from tinker_std.errors import BadRequestError, NotFoundError

from .checkpoint_files import CheckpointFiles
from .messages import RPC_METHODS, Endpoint, WireReply, WireRequest
from .records import CheckpointRecord, RunRecord, ServerRecords
from .state import ServerState

__all__ = ["RestRoutes"]

CHECKPOINT = "training_runs/{run_id}/checkpoints/{kind}/{name}"


class RestRoutes:
    """``GET/POST/PUT/DELETE`` REST endpoints over the server's records and sessions."""

    def __init__(self, records: ServerRecords, state: ServerState, checkpoints: CheckpointFiles) -> None:
        self.records = records
        self.state = state
        self.checkpoints = checkpoints

    def endpoints(self) -> list[Endpoint]:
        """The REST routes (declare them after the refusals: ``sessions/search`` is one)."""
        return [
            Endpoint("training_runs", self._list_runs, ("GET",)),
            Endpoint("training_runs/{run_id}", self._get_run, ("GET",)),
            Endpoint("training_runs/{run_id}/checkpoints", self._list_run_checkpoints, ("GET",)),
            Endpoint(CHECKPOINT, self._delete_checkpoint, ("DELETE",)),
            Endpoint(CHECKPOINT + "/publish", self._publish, ("POST", "DELETE")),
            Endpoint(CHECKPOINT + "/ttl", self._set_ttl, ("PUT",)),
            Endpoint("checkpoints", self._list_checkpoints, ("GET",)),
            Endpoint("weights_info", self._weights_info, RPC_METHODS),
            Endpoint("sessions", self._list_sessions, ("GET",)),
            Endpoint("sessions/{session_id}", self._get_session, ("GET",)),
        ]

    # -- sessions ---------------------------------------------------------------------------

    def _list_sessions(self, request: WireRequest) -> WireReply:
        return WireReply.json({"sessions": sorted(self.state.sessions_of(request.tenant))})

    def _get_session(self, request: WireRequest) -> WireReply:
        session_id = request.params["session_id"]
        session = self.state.sessions_of(request.tenant).get(session_id)
        if session is None:
            raise NotFoundError(f"no session {session_id!r} on this server")
        return WireReply.json(
            {
                "training_run_ids": sorted(session.models),
                "sampler_ids": sorted(session.samplers),
                "user_metadata": session.user_metadata,
                "display_name": session.display_name,
                "tags": session.tags,
            }
        )

    # -- runs -------------------------------------------------------------------------------

    def _run(self, tenant: str, run_id: str) -> RunRecord:
        run = self.records.run(tenant, run_id)
        if run is None:
            raise NotFoundError(f"no training run {run_id!r} on this server")
        return run

    def _run_json(self, run: RunRecord) -> dict[str, Any]:
        checkpoints, _ = self.records.checkpoints(run.tenant, run.run_id)
        last = {kind: [c for c in checkpoints if c.kind == kind] for kind in ("training", "sampler")}
        return {
            "training_run_id": run.run_id,
            "base_model": run.base_model,
            "model_owner": run.tenant,
            "is_lora": True,
            "corrupted": False,
            "lora_rank": run.lora_rank,
            "last_request_time": _iso(run.last_request),
            "last_checkpoint": _checkpoint_json(last["training"][-1]) if last["training"] else None,
            "last_sampler_checkpoint": _checkpoint_json(last["sampler"][-1]) if last["sampler"] else None,
            "user_metadata": run.user_metadata,
        }

    def _list_runs(self, request: WireRequest) -> WireReply:
        limit, offset = _page(request, 20)
        runs, total = self.records.runs(request.tenant, limit, offset)
        return WireReply.json(
            {
                "training_runs": [self._run_json(r) for r in runs],
                "cursor": {"offset": offset, "limit": limit, "total_count": total},
            }
        )

    def _get_run(self, request: WireRequest) -> WireReply:
        return WireReply.json(self._run_json(self._run(request.tenant, request.params["run_id"])))

    def _weights_info(self, request: WireRequest) -> WireReply:
        path = request.json().get("tinker_path")
        self.checkpoints.resolve(request.tenant, path, "tinker_path")
        run = self._run(request.tenant, str(path)[len("tinker://") :].split("/")[0])
        return WireReply.json(
            {
                "base_model": run.base_model,
                "is_lora": True,
                "lora_rank": run.lora_rank,
                "train_mlp": run.train_mlp,
                "train_attn": run.train_attn,
                "train_unembed": run.train_unembed,
            }
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _list_run_checkpoints(self, request: WireRequest) -> WireReply:
        run_id = request.params["run_id"]
        self._run(request.tenant, run_id)
        found, _ = self.records.checkpoints(request.tenant, run_id)
        return WireReply.json({"checkpoints": [_checkpoint_json(c) for c in found], "cursor": None})

    def _list_checkpoints(self, request: WireRequest) -> WireReply:
        limit, offset = _page(request, 100)
        found, total = self.records.checkpoints(request.tenant, None, limit, offset)
        return WireReply.json(
            {
                "checkpoints": [_checkpoint_json(c) for c in found],
                "cursor": {"offset": offset, "limit": limit, "total_count": total},
            }
        )

    def _checkpoint(self, request: WireRequest) -> CheckpointRecord:
        """The caller's checkpoint named by the route's ``run_id``, ``kind`` and ``name``."""
        run_id, checkpoint_id = request.params["run_id"], f"{request.params['kind']}/{request.params['name']}"
        record = self.records.checkpoint(request.tenant, run_id, checkpoint_id)
        if record is None:
            raise NotFoundError(f"no checkpoint tinker://{run_id}/{checkpoint_id}")
        return record

    def _delete_checkpoint(self, request: WireRequest) -> WireReply:
        self.checkpoints.delete(self._checkpoint(request))
        return WireReply.json({})

    def _publish(self, request: WireRequest) -> WireReply:
        record = self._checkpoint(request)
        self.records.set_public(record.tenant, record.run_id, record.checkpoint_id, request.method == "POST")
        return WireReply.json({})

    def _set_ttl(self, request: WireRequest) -> WireReply:
        record = self._checkpoint(request)
        ttl = request.json().get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise BadRequestError("ttl_seconds", f"must be a positive integer or null, got {ttl!r}")
        expires_at = None if ttl is None else time.time() + ttl
        self.records.set_expiry(record.tenant, record.run_id, record.checkpoint_id, expires_at)
        return WireReply.json({})


def _page(request: WireRequest, default_limit: int) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", default_limit))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise BadRequestError("limit", "limit and offset must be integers") from None
    if limit < 1 or offset < 0:
        raise BadRequestError("limit", "limit must be >= 1 and offset >= 0")
    return limit, offset


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _checkpoint_json(record: CheckpointRecord) -> dict[str, Any]:
    return {
        "checkpoint_id": record.checkpoint_id,
        "checkpoint_type": record.kind,
        "time": _iso(record.time),
        "tinker_path": record.tinker_path,
        "size_bytes": record.size_bytes,
        "public": record.public,
        "user_metadata": record.user_metadata,
        "expires_at": None if record.expires_at is None else _iso(record.expires_at),
    }
