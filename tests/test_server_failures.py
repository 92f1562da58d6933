"""The server's error answers (tinker_std/server/failures.py): HTTP status from the error class,
one encoding for refusals and failed futures; and over real HTTP, one status per error class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tinker_std.errors as errors
from tinker_std.server.failures import ServerShutdown, ServerUnsupported, error_reply, failure_reply

from server_support import Wire, served

CASES = [
    (errors.BadRequestError("seq_id", "must be >= 1"), 400, "user"),
    (errors.ContextLengthError("data[0]", "too long"), 400, "user"),
    (errors.NotFoundError("no model"), 404, "user"),
    (errors.ConflictError("exists"), 409, "user"),
    (errors.Unsupported("loss:dro", "mock"), 400, "user"),
    (errors.RequestFailedError("backend died", category="server"), 500, "server"),
    (errors.IncompatibleEnvironmentError("bad pair.", installed={}, fix="pip"), 500, "server"),
    (ServerUnsupported("no billing"), 400, "user"),
    (ServerShutdown("stopping"), 503, "server"),
]


@pytest.mark.parametrize(("error", "status", "category"), CASES, ids=lambda c: getattr(type(c), "__name__", ""))
def test_a_refusal_answers_the_status_of_its_class(error: errors.TinkerError, status: int, category: str) -> None:
    reply = error_reply(error)
    body = json.loads(reply.body)
    assert reply.status == status == type(error).status_code
    assert body["category"] == category
    name = "Unsupported" if isinstance(error, ServerUnsupported) else type(error).__name__
    assert body["error"] == f"{name}: {error}"
    assert ("field" in body) == isinstance(error, errors.BadRequestError)


@pytest.mark.parametrize(("error", "status", "category"), CASES, ids=lambda c: getattr(type(c), "__name__", ""))
def test_a_failed_future_is_answered_200_with_the_same_encoding(
    error: errors.TinkerError, status: int, category: str
) -> None:
    reply = failure_reply(error)
    assert reply.status == 200
    assert json.loads(reply.body)["error"] == json.loads(error_reply(error).body)["error"]


def test_malformed_bodies_and_other_exceptions() -> None:
    refused = error_reply(KeyError("model_id"))
    assert refused.status == 400 and json.loads(refused.body)["field"] == "body"
    failed = json.loads(failure_reply(ZeroDivisionError("x")).body)
    assert failed == {"error": "RequestFailedError: ZeroDivisionError: x", "category": "server"}


def test_status_codes_over_http(tmp_path: Path) -> None:
    with served("mock", tmp_path) as (server, _service, base):
        wire = Wire(server.url)
        session = wire.session()
        model_id = wire.create_model(session, base)
        bad = wire.post("create_model", {"session_id": session, "model_seq_id": "one", "base_model": base})
        assert bad.status_code == 400 and bad.json()["field"] == "model_seq_id"
        assert bad.json()["error"].startswith("BadRequestError: model_seq_id: ")
        missing = wire.post("get_info", {"model_id": "nope:train:0"})
        assert missing.status_code == 404 and missing.json()["error"].startswith("NotFoundError: ")
        twin = wire.post("create_model", {"session_id": session, "model_seq_id": 0, "base_model": base, "x": 1})
        assert twin.status_code == 409 and twin.json()["error"].startswith("ConflictError: ")
        refused = wire.http.get("sessions/s/trace_export")
        assert refused.status_code == 400 and refused.json()["error"].startswith("Unsupported: ")
        malformed = wire.http.post("optim_step", content=b"[1, 2")
        assert malformed.status_code == 400 and malformed.json()["field"] == "body"
        unknown = wire.post("no_such_endpoint")
        assert unknown.status_code == 404 and "unknown endpoint" in unknown.json()["error"]
        wrong_method = wire.http.delete("training_runs")
        assert wrong_method.status_code == 405 and wrong_method.headers["x-should-retry"] == "false"
        for reply in (bad, twin, refused, malformed):
            assert reply.headers["x-should-retry"] == "false"
        assert "x-should-retry" not in missing.headers  # the SDK may retry a 404
        assert wire.post("get_info", {"model_id": model_id}).status_code == 200
