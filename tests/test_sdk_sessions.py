"""An official-SDK client made in a test is closed when its server closes (tests/sdk_sessions.py):
its session heartbeat stops, so it cannot log "Session heartbeat failed" against a dead port."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk_sessions import end_sessions
from server_support import KEY, served

tinker = pytest.importorskip("tinker")


def heartbeat_running(client: object) -> bool:
    holder = client._session_holder  # type: ignore[attr-defined]
    task = getattr(holder, "_session_heartbeat_task", None) if holder is not None else None
    return task is not None and not task.done()


def test_closing_the_server_ends_the_sdk_session(tmp_path: Path) -> None:
    with served("mock", tmp_path) as (server, _, base):
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        sdk.create_lora_training_client(base_model=base, rank=4).result()
        assert heartbeat_running(sdk)  # the SDK started its session's heartbeat
    assert not heartbeat_running(sdk)
    assert sdk._closed


def test_end_sessions_touches_only_that_servers_clients(tmp_path: Path) -> None:
    with served("mock", tmp_path / "a") as (first, _, base), served("mock", tmp_path / "b") as (second, _, _):
        one = tinker.ServiceClient(base_url=first.url, api_key=KEY)
        other = tinker.ServiceClient(base_url=second.url, api_key=KEY)
        one.create_lora_training_client(base_model=base, rank=4).result()
        other.create_lora_training_client(base_model=base, rank=4).result()
        assert end_sessions(first.url) == 1
        assert not heartbeat_running(one) and heartbeat_running(other)
        assert end_sessions(first.url) == 0  # nothing left open there
