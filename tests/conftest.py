"""Shared test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """The test models are tiny: one intra-op thread is fastest, and on a loaded 2-core machine the
    OpenMP pools of the test thread and the client's loop thread otherwise slow each other down."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def sdk_sessions_end_with_their_server() -> Iterator[None]:
    """Every official-SDK client is closed when the in-process server it talks to closes, so no
    heartbeat outlives its server (tests/sdk_sessions.py)."""
    from sdk_sessions import install_for_session

    undo = install_for_session()
    yield
    undo()


@pytest.fixture(autouse=True, scope="module")
def sdk_sessions_end_with_their_module() -> Iterator[None]:
    """Whatever SDK client a module left open is stopped when the module ends: no test module
    shares a server with another, so none is still in use (tests/sdk_sessions.py). Then no SDK
    session heartbeat may be left running: one would log "Session heartbeat failed" once its
    server is gone."""
    yield
    from sdk_sessions import end_all_sessions, live_heartbeats

    end_all_sessions()
    left = live_heartbeats()
    assert not left, f"SDK session heartbeats still running after the module's sweep: {left}"
