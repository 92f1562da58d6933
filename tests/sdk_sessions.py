"""Official-SDK sessions end with their test's server.

A ``tinker.ServiceClient`` keeps background loops (a session heartbeat every 10 s, config refresh)
until it is closed. A test that drops its client without closing it leaves them running after the
server has stopped, and two minutes later the SDK logs "Session heartbeat failed ... Connection
error" for the rest of the run. ``track()`` (installed by ``conftest.py`` for the whole session)
records every SDK client made; ``end_sessions(url)`` closes those made for ``url``. ``conftest.py``
calls it as every in-process ``TinkerServer`` closes; ``server_process`` calls it for child
processes.

Closing clients is not enough: the heartbeat lives in the client's ``InternalClientHolder``, whose
own tasks keep it alive after a dropped client is collected (so a client can be gone and its
heartbeat not), and a ``SamplingClient`` rebuilt from a pickle or a sampler handle gets a *shadow*
holder (``tinker.lib.internal_client_holder._shadow_holder_singleton``) that no ``ServiceClient``
owns. So ``track()`` records every holder too, and ``end_sessions`` stops the holders of ``url``
left open after its clients closed. ``live_heartbeats`` lists the session heartbeats still
running on the SDK's loop, which the module fixture requires to be none.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from collections.abc import Callable
from typing import Any

_clients: weakref.WeakSet[Any] = weakref.WeakSet()
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def track(tinker: Any) -> Callable[[], None]:
    """Record every ``tinker.ServiceClient`` and every SDK client holder (shadow ones included)
    made from now on; the function that stops recording."""
    import tinker.lib.internal_client_holder as holder_module

    original = tinker.ServiceClient.__init__
    holder_class = holder_module.InternalClientHolder
    original_holder = holder_class.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _clients.add(self)

    def recording_holder_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_holder(self, *args, **kwargs)
        _holders.add(self)

    tinker.ServiceClient.__init__ = recording_init
    holder_class.__init__ = recording_holder_init

    def restore() -> None:
        tinker.ServiceClient.__init__ = original
        holder_class.__init__ = original_holder

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
            _close_holder(holder)
    for holder in list(_holders):  # holders whose client was collected, and shadow holders
        if str(getattr(holder, "_base_url", "") or "").rstrip("/") != url.rstrip("/"):
            continue
        if getattr(holder, "_session_heartbeat_task", None) is None:
            continue  # session-less (the SDK's process-wide RestClient holders): no heartbeat, kept for reuse
        _holders.discard(holder)
        if not getattr(holder, "_closed", True):
            closed += 1
            _close_holder(holder)
    _forget_shadow_holders(url)
    return closed


def _close_holder(holder: Any) -> None:
    """Stop ``holder``'s heartbeat, loops and pools (no server call); no-op once closed."""
    with contextlib.suppress(Exception):  # already closed (by close() above, or its finalizer)
        holder.run_coroutine_threadsafe(holder.aclose()).result(timeout=20)


def _forget_shadow_holders(url: str) -> None:
    """Drop ``url``'s closed holders from the SDK's shadow cache, so no later client reuses one."""
    module = sys.modules.get("tinker.lib.internal_client_holder")
    if module is None:
        return
    cache = module._shadow_holder_singleton
    with cache._lock:
        for key, ref in list(cache._cache.items()):
            holder = ref()
            if holder is None or str(getattr(holder, "_base_url", "")).rstrip("/") == url.rstrip("/"):
                del cache._cache[key]


def live_heartbeats() -> list[str]:
    """The SDK session heartbeats still running (one name per task), read on the SDK's loop."""
    holder_module = sys.modules.get("tinker.lib.internal_client_holder")
    if holder_module is None:
        return []
    loop = holder_module._internal_client_holder_thread_singleton._loop
    if loop is None or not loop.is_running():
        return []

    async def heartbeats() -> list[str]:
        return [
            repr(task.get_coro())
            for task in asyncio.all_tasks()
            if not task.done() and getattr(task.get_coro(), "__qualname__", "").endswith("._session_heartbeat")
        ]

    return asyncio.run_coroutine_threadsafe(heartbeats(), loop).result(timeout=20)


def end_all_sessions() -> int:
    """Stop every recorded SDK client and holder still open (their loops and pools only: their
    server may be gone); how many were. ``conftest.py`` calls it after each test module, so a
    client made against a server this module started and stopped by other means cannot outlive
    the module."""
    urls = {str(getattr(item, "_base_url", "") or "") for item in [*_clients, *_holders]}
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
