"""Endpoints of a session's life and of the server itself: client configuration, sessions and
their heartbeats, telemetry, health and capabilities."""

from __future__ import annotations

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError

from .messages import Endpoint, WireReply, WireRequest
from .sdk_fields import check_session_body
from .state import ServerState

__all__ = ["SessionRoutes"]


class SessionRoutes:
    """Sessions of ``state``, and what the SDK asks the server before it starts one."""

    def __init__(
        self,
        service: ServiceClient,
        state: ServerState,
        sdk_chunk_datums: int | None = None,
        compress_requests: bool = False,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """``sdk_chunk_datums``: tell the SDK to send at most this many datums per
        ``forward_backward`` request; by default the server's own per-call limit, so that one SDK
        call within the limits is one request, validated and applied whole (FB-14).
        ``compress_requests``: ask the SDK for zstd ``forward_backward`` bodies.
        ``max_body_bytes``: the largest request body the server reads; the SDK is told to keep its
        chunks (by its own estimate) at half of it."""
        self.service = service
        self.state = state
        self.sdk_chunk_datums = sdk_chunk_datums
        self.compress_requests = compress_requests
        self.max_body_bytes = max_body_bytes

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("client/config", self.client_config, inline=True),
            Endpoint("client/dynamic_config", self.client_config, inline=True),
            Endpoint("create_session", self.create_session),
            Endpoint("session_heartbeat", self.heartbeat, inline=True),
            Endpoint("sessions/{session_id}/finish", self.finish_session),
            Endpoint("telemetry", lambda r: WireReply.json({"status": "accepted"}), inline=True),
            Endpoint("healthz", lambda r: WireReply.json({"status": "ok"}), inline=True),
            Endpoint("get_server_capabilities", self.capabilities),
        ]

    def client_config(self, request: WireRequest) -> WireReply:
        # The SDK's defaults, except plain httpx, chunks as large as the server's limits (FB-14) and
        # server-side custom losses (spec 12: custom_loss_routes).
        return WireReply.json(
            {
                "use_pyqwest_transport": False,
                "proto_compress_fwdbwd": self.compress_requests,
                "fwdbwd_max_chunk_len": self.sdk_chunk_datums or self.service.limits.max_datums_per_call,
                "fwdbwd_max_chunk_bytes_count": self.max_body_bytes // 2,
                "custom_loss_server_side": True,
            }
        )

    def create_session(self, request: WireRequest) -> WireReply:
        body = request.json()
        check_session_body(body)
        metadata, name, tags = body.get("user_metadata"), body.get("display_name"), body.get("tags")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise BadRequestError("user_metadata", "must be an object of strings")
        if name is not None and not isinstance(name, str):
            raise BadRequestError("display_name", "must be a string")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise BadRequestError("tags", "must be a list of strings")
        session_id = self.state.create_session(request.tenant, metadata or None, name, tags)
        return WireReply.json({"type": "create_session", "session_id": session_id})

    def heartbeat(self, request: WireRequest) -> WireReply:
        session_id = str(request.json().get("session_id"))
        if not self.state.heartbeat(request.tenant, session_id):
            # 410 tells the SDK to stop its heartbeats (the session was reaped or never was)
            return WireReply.json({"error": f"session {session_id!r} is gone", "category": "user"}, 410)
        return WireReply.json({"type": "session_heartbeat"})

    def finish_session(self, request: WireRequest) -> WireReply:
        self.state.finish_session(request.tenant, request.params["session_id"])
        return WireReply.json({})

    def capabilities(self, request: WireRequest) -> WireReply:
        return WireReply.json(self.service.get_server_capabilities().model_dump(mode="json"))
