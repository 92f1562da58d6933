"""An HTTP server that speaks the Tinker wire protocol (official ``tinker`` SDK 0.38) in front of
any tinker-std backend: ``TinkerServer(ServiceClient(backend="torch")).start().url`` is a
``base_url`` for ``tinker.ServiceClient``; ``tinker_std.server.asgi.create_app`` is the ASGI app
for any other host."""

from .http import TinkerServer
from .messages import WireReply, WireRequest
from .operations import WireService
from .tenants import Tenants

__all__ = ["Tenants", "TinkerServer", "WireReply", "WireRequest", "WireService"]
