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


def test_holders_without_a_live_service_client_end_with_their_server(tmp_path: Path) -> None:
    """A shadow holder (a SamplingClient rebuilt from a sampler handle) has no ServiceClient, and
    a dropped ServiceClient's holder outlives it through its own heartbeat task: both stop too."""
    import gc

    from sdk_sessions import live_heartbeats

    with served("mock", tmp_path) as (server, _, base):
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        sampler = sdk.create_sampling_client(base_model=base).result()
        again = tinker.SamplingClient.from_sampler_handle(sampler.get_sampler_handle(), api_key=KEY)
        shadow = again.holder
        dropped = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        dropped.create_sampling_client(base_model=base).result()
        dropped_holder = dropped._session_holder
        del dropped
        gc.collect()
        assert shadow is not sdk._session_holder and not shadow._closed
        assert not dropped_holder._closed and len(live_heartbeats()) >= 3
    assert shadow._closed and dropped_holder._closed
    assert live_heartbeats() == []
