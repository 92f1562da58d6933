"""Server-side custom losses (spec 12, CLG): ``create_custom_loss`` stores a loss the SDK traced
and uploaded, and ``forward_backward`` with ``loss_fn="custom"`` and ``{"loss_id": ...}`` runs it.

The client config tells the SDK 0.38 these exist (``custom_loss_server_side``), so
``ServiceClient.create_custom_loss`` uploads its graph here and ``forward_backward_custom`` sends
one ``forward_backward`` with the datums unchanged. The graph is validated against
``tinker_std.custom_loss``'s allow-list *before* it is stored (CLG-1); a loss belongs to
the session that created it, and runs through the library's ``TrainingClient.run_graph_loss``
(as in process: one pass on a backend with the seam, CLG-4, else the surrogate of FB-11), so it
takes one position in the model's order and the gradient is that of the summed per-datum losses
(CLG-2, CLG-3); ``forward`` scores it without gradient (CLG-5).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tinker_std.custom_loss import LossGraph, validate_loss
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError
from tinker_std.futures import APIFuture

from . import protobuf
from .futures import FutureStore, settle_result
from .messages import Endpoint, WireReply, WireRequest, operation_digest, require_int
from .sdk_fields import scoped_datums
from .state import ServerState, TrainingModel

__all__ = ["CustomLossRoutes", "MAX_LOSSES_PER_SESSION"]

#: Losses one session may create (each is a few KB of validated graph).
MAX_LOSSES_PER_SESSION = 256


@dataclass(frozen=True)
class _Stored:
    graph: LossGraph
    digest: str
    request_id: str


class CustomLossRoutes:
    """The losses of every session of ``state``, keyed by session id and loss id."""

    def __init__(self, state: ServerState, futures: FutureStore) -> None:
        self.state = state
        self.futures = futures
        self._lock = threading.Lock()
        self._losses: dict[str, dict[str, _Stored]] = {}  # session id -> loss id -> loss

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("create_custom_loss", self.create_custom_loss)]

    def create_custom_loss(self, request: WireRequest) -> WireReply:
        """Validate and store the loss; answers a future of ``{"loss_id": ...}``. Invalid input is
        a ``BadRequestError`` (HTTP 400) before anything is stored. A retry (same
        ``custom_loss_seq_id``, same body) answers the original request."""
        body = request.json()
        session_id = body.get("session_id")
        self.state.session(request.tenant, session_id)  # NotFoundError for another tenant's
        seq = require_int(body.get("custom_loss_seq_id"), "custom_loss_seq_id")
        if body.get("type", "create_custom_loss") != "create_custom_loss":
            raise BadRequestError("type", "must be 'create_custom_loss'")
        unknown = sorted(set(body) - {"session_id", "custom_loss_seq_id", "name", "inputs", "graph", "type"})
        if unknown:
            raise BadRequestError(unknown[0], "is not a field of CreateCustomLossRequest")
        graph = validate_loss(body.get("name"), body.get("inputs"), body.get("graph"))
        loss_id = f"{session_id}:loss:{seq}"
        digest = operation_digest(request)
        with self._lock:
            self._forget_ended_sessions()
            losses = self._losses.setdefault(str(session_id), {})
            prior = losses.get(loss_id)
            if prior is not None:
                if prior.digest != digest:
                    raise ConflictError(f"custom_loss_seq_id {seq} of this session already created another loss")
                return WireReply.json({"request_id": prior.request_id})
            if len(losses) >= MAX_LOSSES_PER_SESSION:
                raise BadRequestError(
                    "custom_loss_seq_id", f"a session creates at most {MAX_LOSSES_PER_SESSION} losses"
                )
            future: Future[Any] = Future()
            request_id = self.futures.store(future, "json", request.tenant)
            losses[loss_id] = _Stored(graph, digest, request_id)
        settle_result(future, {"loss_id": loss_id, "type": "create_custom_loss"})
        return WireReply.json({"request_id": request_id})

    def _forget_ended_sessions(self) -> None:
        """Drop the losses of sessions the server no longer has (finished or reaped)."""
        for session_id in list(self._losses):
            if not self.state.has_session(session_id):
                del self._losses[session_id]

    def loss(self, session_id: str, loss_id: Any) -> LossGraph:
        """The stored loss ``loss_id`` of ``session_id``; ``NotFoundError`` for any other."""
        if not isinstance(loss_id, str):
            raise BadRequestError(
                "loss_fn_config.loss_id", "loss_fn 'custom' needs the loss_id create_custom_loss gave"
            )
        with self._lock:
            stored = self._losses.get(session_id, {}).get(loss_id)
        if stored is None:
            raise NotFoundError(f"no custom loss {loss_id!r} in this model's session")
        return stored.graph

    def forward_backward(self, model: TrainingModel, msg: Any) -> APIFuture[Any]:
        """Run ``forward_backward`` or ``forward`` request ``msg`` (``loss_fn == "custom"``) on
        ``model`` with its stored loss: validated whole before any step (CLG-3), then one position
        of the model's order (the library's ``run_graph_loss``)."""
        bare = type(msg)()
        bare.CopyFrom(msg)
        loss_id = None
        if "loss_id" in bare.loss_fn_config_v2:
            value = bare.loss_fn_config_v2["loss_id"]
            loss_id = value.text if value.WhichOneof("value") == "text" else None
            del bare.loss_fn_config_v2["loss_id"]
        graph = self.loss(model.session_id, loss_id)
        call = protobuf.decode_forward_backward(bare)
        if call.loss_fn_config:
            key = sorted(call.loss_fn_config)[0]
            raise BadRequestError(f"loss_fn_config.{key}", "loss_fn 'custom' takes loss_id only")
        data = scoped_datums(call.data, model.tenant)
        # forward: the loss without gradient (CLG-5); one pass where the backend has the seam (CLG-4)
        return model.ready().run_graph_loss(data, graph, backward=not call.forward_only)
