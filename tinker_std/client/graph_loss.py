"""Validated graph losses in the client layer (spec 12: CLG-4, CLG-5, CLG-6).

A graph loss is a per-datum custom loss that ``tinker_std.custom_loss`` validated against its
allow-list (CLG-1): uploaded to the server by the SDK, or created in process with
``ServiceClient.create_custom_loss`` (``SessionLosses`` keeps a session's). It runs

- in **one pass** where the backend declares ``one_pass_datum_loss`` (``Backend``'s seam: the
  torch and fsdp backends apply the loss inside their own ``forward_backward``, CLG-4);
- otherwise in **two**, as any custom loss: a forward, then the cross-entropy surrogate (FB-11).

``forward`` with a graph loss (``loss_fn="custom"``) scores it without a gradient (CLG-5). Both
paths give the same outputs, metrics and gradient within the backend's tolerance class.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..backend import Backend
from ..errors import BadRequestError, NotFoundError
from ..types import Datum, ForwardBackwardOutput
from .custom_loss import RunCrossEntropy, run_custom_loss, score_custom_loss

if TYPE_CHECKING:
    from ..custom_loss import LossGraph
    from ..training_math import DatumLoss

__all__ = ["SessionLosses", "custom_loss_id", "run_graph_loss"]

#: A chunked call of a per-datum loss on the backend (``TrainingClient._chunked`` with it).
RunDatumLoss = Callable[[list[Datum], "DatumLoss"], Awaitable[ForwardBackwardOutput]]


class SessionLosses:
    """The graph losses created in one in-process session (``ServiceClient.create_custom_loss``).
    Ids are ``"{session_id}:loss:{n}"``, as the server makes them; a loss lives as long as its
    session. At most ``limit`` losses (the server's per-session limit)."""

    def __init__(self, limit: int = 256) -> None:
        self.session_id = f"local-{uuid.uuid4().hex[:12]}"
        self.limit = limit
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._graphs: dict[str, LossGraph] = {}

    def add(self, graph: LossGraph) -> str:
        """Store ``graph``; its loss id."""
        with self._lock:
            if len(self._graphs) >= self.limit:
                raise BadRequestError("fn", f"a session creates at most {self.limit} custom losses")
            loss_id = f"{self.session_id}:loss:{next(self._seq)}"
            self._graphs[loss_id] = graph
        return loss_id

    def get(self, loss_id: Any, field: str) -> LossGraph:
        """The loss ``loss_id`` of this session: ``BadRequestError`` naming ``field`` unless it is
        a string, ``NotFoundError`` for an id this session did not make."""
        if not isinstance(loss_id, str):
            raise BadRequestError(field, f"must be the loss_id create_custom_loss gave, got {loss_id!r}")
        with self._lock:
            graph = self._graphs.get(loss_id)
        if graph is None:
            raise NotFoundError(f"no custom loss {loss_id!r} in this session")
        return graph


def custom_loss_id(loss_fn_config: Mapping[str, Any] | None) -> Any:
    """The ``loss_id`` of ``loss_fn="custom"``'s config. Without one, ``"custom"`` names no loss:
    a ``BadRequestError`` naming ``loss_fn`` (as for any unknown loss, LOSS-8); any key other
    than ``loss_id`` is one naming that key."""
    config = dict(loss_fn_config or {})
    if "loss_id" not in config:
        raise BadRequestError(
            "loss_fn", "'custom' names a loss of create_custom_loss: give loss_fn_config={'loss_id': ...}"
        )
    other = sorted(k for k in config if k != "loss_id")
    if other:
        raise BadRequestError(f"loss_fn_config.{other[0]}", "loss_fn 'custom' takes loss_id only")
    return config["loss_id"]


async def run_graph_loss(
    backend: Backend,
    data: list[Datum],
    graph: LossGraph,
    backward: bool,
    run_datum_loss: RunDatumLoss,
    run_ce: RunCrossEntropy,
) -> ForwardBackwardOutput:
    """``graph`` on ``data`` (inputs already checked, CLG-3): one pass through the backend's seam
    when it declares ``one_pass_datum_loss``, else the two-pass path of FB-11 (``backward``) or
    a forward and the loss without gradient (``forward``, CLG-5)."""
    from ..custom_loss import GraphLoss, graph_loss_fn

    if type(backend).one_pass_datum_loss:
        return await run_datum_loss(data, GraphLoss(graph))
    if backward:
        return await run_custom_loss(data, graph_loss_fn(graph), run_ce)
    return await score_custom_loss(data, graph_loss_fn(graph), run_ce)
