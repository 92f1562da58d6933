"""``serve=NAME``: a tinker-std server on 127.0.0.1 (a free port) in this process, over backend NAME
(a registered name or ``module:Class``, but not the ``tinker`` backend itself), for tests and CI.
Its API key is random, so nothing else on the machine can use it."""

from __future__ import annotations

import secrets
from typing import Any

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError
from tinker_std.registry import available_backends, load_backend_class

__all__ = ["LocalServer"]

_SELF = "tinker_std.backends.tinker:"  # serving this backend through itself would recurse


def _servable_class(spec: str) -> bool:
    """Whether ``spec`` is a ``module:Class`` backend other than this one (a provider's own
    backend, or a test's broken peer, served over loopback HTTP)."""
    if ":" not in spec or spec.startswith(_SELF):
        return False
    try:
        cls = load_backend_class(spec)
    except Exception:
        return False
    return not cls.__module__.startswith(_SELF.rstrip(":"))


class LocalServer:
    """A ``TinkerServer`` over ``ServiceClient(backend, **options)``; ``url`` and ``api_key`` reach it."""

    def __init__(self, backend: str, options: dict[str, Any]) -> None:
        servable = {n for n, target in available_backends().items() if not target.startswith(_SELF)}
        if backend not in servable and not _servable_class(backend):
            choices = ", ".join(sorted(servable))
            raise BadRequestError(
                "serve",
                f"{backend!r} is not a backend this process can serve; choose one of {choices} or a module:Class",
            )
        self.backend = backend
        self.options = options
        self.api_key = f"tml-loopback-{secrets.token_hex(16)}"
        self.service: ServiceClient | None = None
        self._server: Any = None

    @property
    def url(self) -> str:
        assert self._server is not None, "LocalServer.start() first"
        return str(self._server.url)

    def start(self) -> None:
        """Serve (blocking until the port accepts connections)."""
        from tinker_std.server import TinkerServer

        self.service = ServiceClient(backend=self.backend, **self.options)
        self._server = TinkerServer(self.service, host="127.0.0.1", port=0, api_key=self.api_key).start()

    def close(self) -> None:
        """Stop the server, then its backend."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.service is not None:
            self.service.close()
            self.service = None
