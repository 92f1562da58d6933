"""uvicorn's httptools protocol, writing each answer's head and body in one system call.

uvicorn writes an answer's status line and headers (``http.response.start``) and its body
(``http.response.body``) with two ``transport.write`` calls, so two ``send`` system calls. Each
system call gives up the GIL, and the event loop then waits for it behind the engine's Python
code (up to one switch interval: ``http.py``); in a process that also trains, that wait, twice
per answer, was most of the server loop's share of an SDK step (bench/server_overhead.py).

``CoalescingTransport`` holds a write that ends an answer's head and sends it with the next write
(the body, which Starlette sends right after it, without yielding to the loop): one ``send`` per
answer (a body over 64 KiB is not copied to join its head: it follows it in a ``send`` of its
own). A head with nothing after it in the same turn of the loop (a streamed answer whose first
chunk comes later) is sent by a callback at the loop's next turn. Nothing is reordered or
dropped: every write and ``close`` sends what is held first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]

#: The largest body joined to its head (a copy); a larger one follows its head in a send of its own.
_JOIN_BYTES = 64 * 1024


class CoalescingTransport:
    """Wraps an ``asyncio.Transport``: an answer's head (a write ending in a blank line) waits
    for the next write or the loop's next turn, whichever comes first; everything else is the
    wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held, self._held = self._held, None
        if held is not None and len(data) > _JOIN_BYTES:
            self._transport.write(held)  # a large body: one more send costs less than copying it
        elif held is not None:
            data = held + bytes(data)
        elif bytes(data[-4:]) == b"\r\n\r\n" and data[:5] == b"HTTP/":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
