"""Official-SDK sessions end with their test's server.

A ``tinker.ServiceClient`` keeps background loops (a session heartbeat every 10 s, config refresh)
until it is closed. A test that drops its client without closing it leaves them running after the
server has stopped, and two minutes later the SDK logs "Session heartbeat failed ... Connection
error" for the rest of the run. ``track()`` (installed by ``conftest.py`` for the whole session)
records every SDK client made; ``end_sessions(url)`` closes those made for ``url``. ``conftest.py``
calls it as every in-process ``TinkerServer`` closes; ``server_process`` calls it for child
processes.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable
from typing import Any

_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def track(tinker: Any) -> Callable[[], None]:
    """Record every ``tinker.ServiceClient`` made from now on; the function that stops recording."""
    original = tinker.ServiceClient.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _clients.add(self)

    tinker.ServiceClient.__init__ = recording_init

    def restore() -> None:
        tinker.ServiceClient.__init__ = original

    return restore


def end_sessions(url: str, server_alive: bool = True) -> int:
    """Close every recorded SDK client whose base URL is ``url``; how many were open.

    With the server alive, ``close("success")`` finishes the session on the server too. Otherwise
    (or if that fails: the session was reaped, the server is shutting down) only the client's own
    loops and connection pools are stopped, which needs no server."""
    closed = 0
    for client in list(_clients):
        if str(getattr(client, "_base_url", "") or "").rstrip("/") != url.rstrip("/"):
            continue
        _clients.discard(client)
        if getattr(client, "_closed", False):
            continue
        closed += 1
        holders = [h for h in (client._session_holder, client._rest_holder) if h is not None]
        if server_alive:
            with contextlib.suppress(Exception):  # fall through to the local close below
                client.close("success").result(timeout=20)
        for holder in holders:
            with contextlib.suppress(Exception):  # already closed by close() above
                holder.run_coroutine_threadsafe(holder.aclose()).result(timeout=20)
    return closed


def end_all_sessions() -> int:
    """Stop every recorded SDK client still open (its loops and pools only: its server may be
    gone); how many were. ``conftest.py`` calls it after each test module, so a client made
    against a server this module started and stopped by other means cannot outlive the module."""
    urls = {str(getattr(client, "_base_url", "") or "") for client in list(_clients)}
    return sum(end_sessions(url, server_alive=False) for url in urls)


def install_for_session() -> Callable[[], None]:
    """``track`` the SDK (if a test module imported it) and end sessions as each in-process
    ``TinkerServer`` closes; the function that undoes both."""
    tinker = sys.modules.get("tinker")
    http = sys.modules.get("tinker_std.server.http")
    if tinker is None or not hasattr(tinker, "ServiceClient") or http is None:
        return lambda: None
    untrack = track(tinker)
    server_class = http.TinkerServer
    original_close = server_class.close

    def close_after_sessions(self: Any) -> None:
        end_sessions(self.url)
        original_close(self)

    server_class.close = close_after_sessions

    def undo() -> None:
        untrack()
        server_class.close = original_close

    return undo
