"""The HTTP transport of the tinker-std server: the ASGI app of ``asgi.py`` on uvicorn.

``TinkerServer(service, ...).start()`` serves from a background thread (tests, notebooks);
``serve_forever()`` serves from the main thread and stops gracefully on SIGTERM or SIGINT: every
unfinished future fails at once with ``ServerShutdown`` (so long polls answer), in-flight requests
get up to ``shutdown_grace_s`` to finish, and ``serve_forever`` returns (the caller then closes
its ``ServiceClient``; nothing is left running).
"""

from __future__ import annotations

import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from tinker_std.client.service import ServiceClient

from .asgi import create_app
from .operations import WireService

__all__ = ["TinkerServer"]


class _Uvicorn(uvicorn.Server):
    """uvicorn that fails pending futures first when asked to stop, and does not re-raise the
    signal after its graceful shutdown (the caller still has its backend to close)."""

    def __init__(self, config: uvicorn.Config, operations: WireService) -> None:
        super().__init__(config)
        self.operations = operations

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == 2:  # a second Ctrl-C: stop now
            self.force_exit = True
        self.should_exit = True
        threading.Thread(target=self.operations.close, daemon=True).start()


class TinkerServer:
    """Serves ``service`` over the Tinker wire protocol on ``host:port`` (port 0: a free one).

    ``url`` is the ``base_url`` to give the official SDK. The keyword options are
    ``create_app``'s (keys, records, limits, reaping)."""

    def __init__(
        self,
        service: ServiceClient,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        sdk_chunk_datums: int | None = None,
        shutdown_grace_s: int = 5,
        **app_options: Any,
    ) -> None:
        self.app = create_app(service, api_key=api_key, sdk_chunk_datums=sdk_chunk_datums, **app_options)
        self.operations: WireService = self.app.state.operations
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says
        # TCP. Without it Nagle's algorithm meets the client's delayed ACKs and each short answer
        # waits ~40 ms (bench/server_overhead.py: healthz 44 ms -> 0.9 ms).
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(2048)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,  # the app writes its own structured access log
            lifespan="on",
            timeout_graceful_shutdown=shutdown_grace_s,
            timeout_keep_alive=60,
        )
        self._server = _Uvicorn(config, self.operations)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    def start(self) -> TinkerServer:
        """Serve from a background thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, name="tinker-std-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the tinker-std server did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve until ``close()`` or (from the main thread) SIGTERM/SIGINT."""
        self._server.run(sockets=[self._socket])

    def close(self) -> None:
        """Stop serving (the ``ServiceClient`` stays open: its owner closes it)."""
        self._server.handle_exit(15, None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> TinkerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
