"""The REST half of the Tinker API (the SDK's ``RestClient``), over the server's records.

Implemented: training runs (list, get), checkpoints of a run and of the caller (list), delete,
publish / unpublish (a recorded flag: tinker-std serves a checkpoint only to its own tenant),
TTL (the checkpoint is deleted once it expires: ``WireService``'s reaper calls
``delete_expired``), ``weights_info``, sessions (list, get). Refused with a typed ``Unsupported``
answer (HTTP 400, ``x-should-retry: false``): external weight URLs, copying weights between
runs, session projects, session search and trace export, storage usage, audit log and billing.
Every object is looked up within the caller's tenant: another tenant's is 404.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tinker_std.errors import BadRequestError, NotFoundError

from .records import CheckpointRecord, RunRecord

if TYPE_CHECKING:
    from .operations import WireReply, WireRequest, WireService

__all__ = ["UNSUPPORTED", "RestRoutes"]

#: endpoint prefix or suffix -> what the refusal says
UNSUPPORTED = {
    "external_weights_urls": "external weight URLs (save_weights_external) are not supported by the tinker-std server",
    "copy_weights": "copying weights between training runs is not supported by the tinker-std server",
    "project": "session projects are not supported by the tinker-std server",
    "sessions/search": "session search is not supported by the tinker-std server",
    "trace_export": "session trace export is not supported by the tinker-std server",
    "save_weights_external": "save_weights_external is not supported by the tinker-std server",
    "create_custom_loss": "server-side custom losses are not supported by the tinker-std server",
    "checkpoint_storage_usage": "storage usage is not reported by the tinker-std server",
    "audit": "the audit log is not part of the tinker-std server",
    "billing": "billing is not part of the tinker-std server",
    "auth/token": "JWT exchange is not supported by the tinker-std server (use an API key)",
    "join_sampling_session": "joining sampling sessions is not supported by the tinker-std server",
    "retrieve_futures": "batch future polling is not supported by the tinker-std server",
    "cancel_future": "cancelling futures is not supported by the tinker-std server",
}


class UnsupportedEndpoint(Exception):
    """An endpoint of the Tinker API that this server refuses on purpose."""


class RestRoutes:
    """``GET/POST/PUT/DELETE`` REST endpoints of ``service``."""

    def __init__(self, service: WireService) -> None:
        self.service = service
        self.records = service.records

    def call(self, request: WireRequest) -> WireReply:
        from .operations import WireReply

        parts = request.endpoint.strip("/").split("/")
        for marker, why in UNSUPPORTED.items():
            if marker in request.endpoint:
                return WireReply.json({"error": f"Unsupported: {why}", "category": "user"}, 400)
        tenant, method = request.tenant, request.method
        if parts[0] == "training_runs":
            if len(parts) == 1 and method == "GET":
                return self._list_runs(request)
            run_id = parts[1] if len(parts) > 1 else ""
            if len(parts) == 2 and method == "GET":
                return WireReply.json(self._run_json(self._run(tenant, run_id)))
            if len(parts) == 3 and parts[2] == "checkpoints" and method == "GET":
                self._run(tenant, run_id)
                found, _ = self.records.checkpoints(tenant, run_id)
                return WireReply.json({"checkpoints": [_checkpoint_json(c) for c in found], "cursor": None})
            if len(parts) >= 5 and parts[2] == "checkpoints":
                checkpoint_id = f"{parts[3]}/{parts[4]}"
                action = parts[5] if len(parts) == 6 else None
                return self._checkpoint_action(request, run_id, checkpoint_id, action)
        if parts == ["checkpoints"] and method == "GET":
            limit, offset = _page(request, 100)
            found, total = self.records.checkpoints(tenant, None, limit, offset)
            return WireReply.json(
                {
                    "checkpoints": [_checkpoint_json(c) for c in found],
                    "cursor": {"offset": offset, "limit": limit, "total_count": total},
                }
            )
        if parts == ["weights_info"]:
            return self._weights_info(request)
        if parts == ["sessions"] and method == "GET":
            return WireReply.json({"sessions": sorted(self.service.sessions_of(tenant))})
        if len(parts) == 2 and parts[0] == "sessions" and method == "GET":
            session = self.service.sessions_of(tenant).get(parts[1])
            if session is None:
                raise NotFoundError(f"no session {parts[1]!r} on this server")
            return WireReply.json({"training_run_ids": sorted(session.models), "sampler_ids": sorted(session.samplers)})
        return WireReply.json({"error": f"NotFoundError: unknown endpoint /api/v1/{request.endpoint}"}, 404)

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
        from .operations import WireReply

        limit, offset = _page(request, 20)
        runs, total = self.records.runs(request.tenant, limit, offset)
        return WireReply.json(
            {
                "training_runs": [self._run_json(r) for r in runs],
                "cursor": {"offset": offset, "limit": limit, "total_count": total},
            }
        )

    def _weights_info(self, request: WireRequest) -> WireReply:
        from .operations import WireReply

        path = request.json().get("tinker_path")
        self.service.resolve_checkpoint(request.tenant, path, "tinker_path")
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

    # -- one checkpoint ---------------------------------------------------------------------

    def _checkpoint_action(
        self, request: WireRequest, run_id: str, checkpoint_id: str, action: str | None
    ) -> WireReply:
        from .operations import WireReply

        tenant, method = request.tenant, request.method
        record = self.records.checkpoint(tenant, run_id, checkpoint_id)
        if record is None:
            raise NotFoundError(f"no checkpoint tinker://{run_id}/{checkpoint_id}")
        if action is None and method == "DELETE":
            self.delete(record)
            return WireReply.json({})
        if action == "publish" and method in ("POST", "DELETE"):
            self.records.set_public(tenant, run_id, checkpoint_id, method == "POST")
            return WireReply.json({})
        if action == "ttl" and method == "PUT":
            ttl = request.json().get("ttl_seconds")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
                raise BadRequestError("ttl_seconds", f"must be a positive integer or null, got {ttl!r}")
            self.records.set_expiry(tenant, run_id, checkpoint_id, None if ttl is None else time.time() + ttl)
            return WireReply.json({})
        return WireReply.json({"error": f"NotFoundError: unknown endpoint /api/v1/{request.endpoint}"}, 404)

    def delete(self, record: CheckpointRecord) -> None:
        """Delete a checkpoint: its record first (the name goes at once), then its files."""
        self.records.delete_checkpoint(record.tenant, record.run_id, record.checkpoint_id)
        self.service.delete_backend_checkpoint(record.backend_path)

    def delete_expired(self, now: float | None = None) -> int:
        """Delete every checkpoint whose TTL has passed; how many."""
        expired = self.records.expired(time.time() if now is None else now)
        for record in expired:
            self.delete(record)
        return len(expired)


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
