"""The HTTP transport of the tinker-std server: stdlib ``ThreadingHTTPServer``, one thread per
request, every ``/api/v1/...`` path handed to ``WireService.call``.

The SDK authenticates with ``X-API-Key``; with ``api_key`` set the server answers 401 to any other
key, without it any key is accepted (a local, single-user server)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tinker_std.client.service import ServiceClient

from .operations import WireReply, WireService

__all__ = ["TinkerServer"]

PREFIX = "/api/v1/"


class TinkerServer:
    """Serves ``service`` over the Tinker wire protocol on ``host:port`` (port 0: a free one).

    ``start()`` serves from a background thread; ``serve_forever()`` from this one. ``url`` is the
    ``base_url`` to give the official SDK."""

    def __init__(
        self,
        service: ServiceClient,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        sdk_chunk_datums: int | None = None,
    ) -> None:
        self.operations = WireService(service, sdk_chunk_datums)
        self.api_key = api_key
        self._http = ThreadingHTTPServer((host, port), _handler(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> TinkerServer:
        self._thread = threading.Thread(target=self._http.serve_forever, name="tinker-std-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def close(self) -> None:
        """Stop serving (the ``ServiceClient`` stays open: its owner closes it)."""
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TinkerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(server: TinkerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length) if length else b"")

        def do_PUT(self) -> None:
            self.do_POST()

        def do_DELETE(self) -> None:
            self.do_POST()

        def _answer(self, body: bytes) -> None:
            path = self.path.split("?", 1)[0]
            if server.api_key is not None and self.headers.get("X-API-Key") != server.api_key:
                reply = WireReply.json({"error": "invalid X-API-Key"}, 401)
            elif not path.startswith(PREFIX):
                reply = WireReply.json({"error": f"unknown path {path}"}, 404)
            elif (self.headers.get("Content-Encoding") or "identity") != "identity":
                reply = WireReply.json({"error": "compressed bodies are not supported"}, 415)
            else:
                reply = server.operations.call(path[len(PREFIX) :], body)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            if reply.status >= 400 and reply.status != 404:
                self.send_header("x-should-retry", "false")
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

    return Handler
