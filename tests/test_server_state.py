"""The server's registries (tinker_std/server/state.py): tenants see only their own objects, and the
reaper releases idle sessions but not one whose model is still being created."""

from __future__ import annotations

import time

import pytest

from tinker_std.errors import ConflictError, NotFoundError
from tinker_std.server.state import ServerState


def test_a_session_belongs_to_its_tenant() -> None:
    state = ServerState()
    session_id = state.create_session("alice")
    assert state.session("alice", session_id).tenant == "alice"
    with pytest.raises(NotFoundError):
        state.session("bob", session_id)
    assert not state.heartbeat("bob", session_id) and state.heartbeat("alice", session_id)
    assert list(state.sessions_of("alice")) == [session_id] and state.sessions_of("bob") == {}
    state.finish_session("bob", session_id)  # not bob's: nothing happens
    assert list(state.sessions_of("alice")) == [session_id]


def test_a_model_id_is_claimed_once_and_a_retry_gets_the_original_request() -> None:
    state = ServerState()
    session_id = state.create_session("alice")
    session = state.session("alice", session_id)
    model_id = f"{session_id}:train:0"
    assert state.claim_model(model_id, "alice", "digest-1", session) is None
    original = state.reserved_model(model_id).request_id
    assert state.claim_model(model_id, "alice", "digest-1", session) == original
    with pytest.raises(ConflictError):
        state.claim_model(model_id, "alice", "digest-2", session)
    with pytest.raises(NotFoundError):
        state.model("bob", model_id)
    with pytest.raises(NotFoundError, match="still being created"):
        state.model("alice", model_id).ready()
    state.forget_model(model_id)
    with pytest.raises(NotFoundError):
        state.model("alice", model_id)


def test_the_reaper_spares_a_session_whose_model_is_being_created() -> None:
    state = ServerState(idle_session_s=1.0)
    busy, idle = state.create_session("alice"), state.create_session("alice")
    model_id = f"{busy}:train:0"
    state.claim_model(model_id, "alice", "d", state.session("alice", busy))
    later = time.monotonic() + 5
    assert state.reap_idle(now=later) == [idle]
    state.forget_model(model_id)  # its creation failed: nothing keeps the session now
    assert state.reap_idle(now=later) == [busy]
    assert state.sessions_of("alice") == {}
    assert ServerState(idle_session_s=None).reap_idle(now=later) == []
