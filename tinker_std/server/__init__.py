"""An HTTP server that speaks the Tinker wire protocol (official ``tinker`` SDK 0.38) in front of
any tinker-std backend: ``TinkerServer(ServiceClient(backend="torch")).start().url`` is a
``base_url`` for ``tinker.ServiceClient``."""

from .http import TinkerServer
from .operations import WireReply, WireService

__all__ = ["TinkerServer", "WireReply", "WireService"]
