"""The HTTP transport of the tinker-std server: the ASGI app of ``asgi.py`` on uvicorn.

``TinkerServer(service, ...).start()`` serves from a background thread (tests, notebooks);
``serve_forever()`` serves from the main thread and stops gracefully on SIGTERM or SIGINT: every
unfinished future fails at once with ``ServerShutdown`` (so long polls answer), in-flight requests
get up to ``shutdown_grace_s`` to finish, and ``serve_forever`` returns (the caller then closes
its ``ServiceClient``; nothing is left running).

While it serves, the process's GIL switch interval is at most ``gil_switch_interval_s`` (1 ms;
Python's default is 5 ms). The engine's Python code (a model's forward, the optimizer's loop)
holds the GIL; every time the event loop comes back from a system call (``epoll``, ``send``) it
must take the GIL back, and waits up to one switch interval for it. A request costs several such
waits, so with 5 ms a step's requests waited tens of milliseconds behind a busy engine
(bench/server_overhead.py); the SDK's own event loop, in the same process as a test's server, paid
the same. ``None`` leaves the interval alone; the last server to stop restores the old value.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from tinker_std.client.service import ServiceClient

from .asgi import create_app
from .operations import WireService

try:  # the server extra installs httptools; without it uvicorn parses with h11, one write per part
    from .transport import CoalescingHttpToolsProtocol

    _HTTP_PROTOCOL: Any = CoalescingHttpToolsProtocol
except ImportError:  # pragma: no cover
    _HTTP_PROTOCOL = "auto"

__all__ = ["DEFAULT_GIL_SWITCH_INTERVAL_S", "TinkerServer"]

#: The GIL switch interval while a server serves (module docstring).
DEFAULT_GIL_SWITCH_INTERVAL_S = 0.001


class _SwitchInterval:
    """The process's GIL switch interval, lowered while at least one server serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved = sys.getswitchinterval()

    def lower(self, interval: float) -> None:
        with self._lock:
            if self._holders == 0:
                self._saved = sys.getswitchinterval()
            self._holders += 1
            if interval < sys.getswitchinterval():
                sys.setswitchinterval(interval)

    def restore(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                sys.setswitchinterval(self._saved)


_switch_interval = _SwitchInterval()


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
    ``create_app``'s (keys, records, limits, reaping). ``gil_switch_interval_s``: module
    docstring."""

    def __init__(
        self,
        service: ServiceClient,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        sdk_chunk_datums: int | None = None,
        shutdown_grace_s: int = 5,
        gil_switch_interval_s: float | None = DEFAULT_GIL_SWITCH_INTERVAL_S,
        **app_options: Any,
    ) -> None:
        self.gil_switch_interval_s = gil_switch_interval_s
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
            http=_HTTP_PROTOCOL,  # one send per answer: transport.py
            server_header=False,  # a header fewer for every answer to build and the SDK to parse
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
        if self.gil_switch_interval_s is None:
            self._server.run(sockets=[self._socket])
            return
        _switch_interval.lower(self.gil_switch_interval_s)
        try:
            self._server.run(sockets=[self._socket])
        finally:
            _switch_interval.restore()

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
