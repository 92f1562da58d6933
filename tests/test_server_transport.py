"""The server writes each answer's head and body in one system call (tinker_std/server/transport.py),
without reordering, losing or delaying bytes: checked on a real uvicorn server over loopback, and on
the wrapper alone for the cases a plain answer does not reach (a head with no body in the same turn
of the loop, a close with a head held). Speed is measured by bench/server_overhead.py, never here."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinker_std.server import TinkerServer
from tinker_std.server.transport import CoalescingTransport

from server_support import KEY, Wire, served


@pytest.fixture
def mock_server(tmp_path: Path) -> Iterator[TinkerServer]:
    with served("mock", tmp_path) as (server, _, _):
        yield server


def test_each_answer_leaves_the_server_in_one_write(mock_server: TinkerServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncio import selector_events

    writes: list[bytes] = []
    original = selector_events._SelectorSocketTransport.write

    def recording(self: Any, data: Any) -> None:
        if threading.current_thread().name == "tinker-std-server":
            writes.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", recording)
    wire = Wire(mock_server.url)
    assert wire.http.get("healthz").json() == {"status": "ok"}
    caps = wire.http.get("get_server_capabilities")
    assert caps.status_code == 200 and caps.json()["supported_models"]
    missing = wire.post("retrieve_future", {"request_id": "nope"})  # an error answer too
    assert missing.status_code == 404
    assert len(writes) == 3, [w[:40] for w in writes]
    for write, answer in zip(writes, ("healthz", caps, missing), strict=True):
        head, _, body = write.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), write[:40]
        if not isinstance(answer, str):
            assert body == answer.content


class _Recorder:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_head_alone_is_sent_at_the_next_turn_of_the_loop_and_before_a_close() -> None:
    async def run() -> tuple[list[bytes], list[bytes], list[bytes], bool]:
        loop = asyncio.get_running_loop()
        inner = _Recorder()
        transport = CoalescingTransport(inner, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        held = list(inner.written)
        await asyncio.sleep(0)  # the loop's next turn
        await asyncio.sleep(0)
        alone = list(inner.written)
        transport.write(b"data: 1\n\n")  # a later chunk goes out as it is
        transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        transport.close()
        return held, alone, inner.written, inner.closed

    held, alone, written, closed = asyncio.run(run())
    assert held == [], "a head was sent before its turn ended"
    assert alone == [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"]
    assert written[1:] == [b"data: 1\n\n", b"HTTP/1.1 204 No Content\r\n\r\n"] and closed


def test_a_head_and_its_body_go_out_as_one_write_in_order() -> None:
    async def run() -> list[bytes]:
        inner = _Recorder()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(memoryview(b"ok"))
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n")
        transport.write(b"yes")
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
        transport.write(b"x" * 100_000)  # a large body is not copied to join its head
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == "info:peername"  # everything else is the transport's
        return inner.written

    assert asyncio.run(run()) == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n",
        b"x" * 100_000,
    ]


def test_a_pipelined_connection_gets_every_answer_in_order(mock_server: TinkerServer) -> None:
    """Two requests written at once on one connection: both answers, complete, in order."""
    host, port = mock_server.url.removeprefix("http://").split(":")
    request = f"GET /api/v1/healthz HTTP/1.1\r\nhost: {host}\r\nx-api-key: {KEY}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request + request)
        data = b""
        while data.count(b'{"status": "ok"}') < 2:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b'{"status": "ok"}')
