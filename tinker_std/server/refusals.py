"""The parts of the Tinker API the tinker-std server refuses on purpose (docs/server.md), as declared
routes: each answers any method with a typed ``Unsupported`` refusal (HTTP 400,
``x-should-retry: false``), so the SDK fails fast with a message saying why.

A refusal matches its own paths only, segment by segment (Starlette route syntax): a checkpoint
or session whose *name* contains a refused endpoint's word (``project_v1``, ``audit-2``,
``billing_test``) is an ordinary object. External weights are served (``external_weights.py``).
"""

from __future__ import annotations

from .failures import ServerUnsupported
from .messages import Endpoint, Handler, WireReply, WireRequest

__all__ = ["UNSUPPORTED", "refusal_endpoints"]

ANY_METHOD = ("GET", "POST", "PUT", "DELETE", "PATCH")

#: refused endpoint -> what the refusal says
UNSUPPORTED = {
    "copy_weights": "copying weights between training runs is not supported by the tinker-std server",
    "project": "session projects are not supported by the tinker-std server",
    "sessions/search": "session search is not supported by the tinker-std server",
    "trace_export": "session trace export is not supported by the tinker-std server",
    "audit": "the audit log is not part of the tinker-std server",
    "billing": "billing is not part of the tinker-std server",
    "auth/token": "JWT exchange is not supported by the tinker-std server (use an API key)",
    "join_sampling_session": "joining sampling sessions is not supported by the tinker-std server",
    "retrieve_futures": "batch future polling is not supported by the tinker-std server",
    "cancel_future": "cancelling futures is not supported by the tinker-std server",
}

#: route path under ``/api/v1/`` -> the ``UNSUPPORTED`` entry it answers with. Order matters only
#: against other routes: ``sessions/search`` is declared before ``sessions/{session_id}``.
REFUSED_PATHS = {
    "copy_weights": "copy_weights",
    "sessions/{session_id}/project": "project",
    "sessions/search": "sessions/search",
    "sessions/{session_id}/trace_export": "trace_export",
    "audit": "audit",
    "audit/{rest:path}": "audit",
    "billing": "billing",
    "billing/{rest:path}": "billing",
    "auth/token": "auth/token",
    "join_sampling_session": "join_sampling_session",
    "retrieve_futures": "retrieve_futures",
    "cancel_future": "cancel_future",
}


def refusal_endpoints() -> list[Endpoint]:
    """One declared route per refused path."""
    return [Endpoint(path, _refuse(UNSUPPORTED[key]), ANY_METHOD) for path, key in REFUSED_PATHS.items()]


def _refuse(why: str) -> Handler:
    def refuse(request: WireRequest) -> WireReply:
        raise ServerUnsupported(why)

    return refuse
