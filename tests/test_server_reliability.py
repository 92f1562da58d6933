"""Reliability of the server under real use, through the official SDK 0.38 and raw wire calls on
loopback (issue 21): all-or-nothing calls (FB-14), finite or refused (FB-15, OPT-10), bounded
resources (LIM), retries matched on what identifies the operation, long polls that never starve
other requests, clean shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.cli import build_parser
from tinker_std.server import TinkerServer

from server_support import KEY, Wire, fb_body, proto_headers, served

tinker = pytest.importorskip("tinker")
os.environ["TINKER_TELEMETRY"] = "0"


def sdk_datum(tokens: list[int], weights: list[float] | None = None) -> Any:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights or [1.0] * (len(tokens) - 1)},
    )


PROBE = [[1, 5, 9, 14, 3, 7], [4, 4, 8, 2, 11]]
ADAM = {"learning_rate": 1e-2}


@pytest.fixture
def mock_server(tmp_path: Path) -> Iterator[tuple[TinkerServer, ts.ServiceClient, str]]:
    with served("mock", tmp_path) as triple:
        yield triple


def _logprobs(tc: Any) -> list[np.ndarray]:
    out = tc.forward([sdk_datum(t) for t in PROBE], "cross_entropy").result()
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def test_an_sdk_call_with_one_bad_datum_leaves_no_gradient(mock_server: tuple[TinkerServer, Any, str]) -> None:
    """The issue's reproduction: ``forward_backward([good]*1024 + [bad_token_datum])``, which the
    SDK used to send as two requests (its default chunk is 1024 datums) of which the first was
    applied. The server now advertises chunks as large as its per-call limit (FB-14)."""
    server, _, base = mock_server
    sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    twin = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    good = sdk_datum([1, 5, 9, 14, 3, 7])
    bad = sdk_datum([1, 5, 9, 10**6, 3, 7])  # a token id over the vocabulary: refused by validation
    for c in (tc, twin):
        c.forward_backward([sdk_datum(PROBE[1])], "cross_entropy").result()
    with pytest.raises(Exception, match="BadRequestError") as info:
        tc.forward_backward([good] * 1024 + [bad], "cross_entropy").result()
    assert "data[1024]" in str(info.value)
    started = time.monotonic()
    for c in (tc, twin):
        c.optim_step(tinker.AdamParams(**ADAM)).result()
    assert time.monotonic() - started < 20, "the next request waited for a seq_id gap"
    for x, y in zip(_logprobs(tc), _logprobs(twin), strict=True):
        np.testing.assert_array_equal(x, y, err_msg="FB-14: the failed call left a gradient behind")


def test_non_finite_losses_are_refused_and_no_reply_carries_nan(
    mock_server: tuple[TinkerServer, Any, str],
) -> None:
    """The issue: a NaN/inf loss was accepted, the ``optim_step`` reply carried a bare ``NaN``
    (``JSONDecodeError`` in the SDK) and the adapter was poisoned (FB-15, OPT-10)."""
    server, _, base = mock_server
    sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    before = _logprobs(tc)
    overflowing = tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 5, 9, 14, 3]),
        loss_fn_inputs={"target_tokens": [5, 9, 14, 3, 7], "advantages": [1.0] * 5, "logprobs": [-1e4] * 5},
    )
    with pytest.raises(Exception, match="NonFiniteError"):
        tc.forward_backward([overflowing], "importance_sampling").result()
    step = tc.optim_step(tinker.AdamParams(**ADAM)).result()
    assert all(np.isfinite(v) for v in step.metrics.values()), step.metrics
    for x, y in zip(_logprobs(tc), before, strict=True):
        np.testing.assert_array_equal(x, y)  # nothing was accumulated: with m = 0 the step moved nothing


def test_json_replies_never_carry_non_json_numbers() -> None:
    from tinker_std.server.messages import WireReply

    reply = WireReply.json({"metrics": {"loss:sum": float("nan"), "x": [1.0, float("inf")]}, "ok": 2})
    import json

    assert json.loads(reply.body) == {"metrics": {"loss:sum": None, "x": [1.0, None]}, "ok": 2}
    assert b"NaN" not in reply.body and b"Infinity" not in reply.body


def test_long_polls_hold_no_worker_thread(tmp_path: Path) -> None:
    """The issue's unanswered ``save_weights_for_sampler``: every ``retrieve_future`` long poll used
    to hold one of the server's worker threads for up to 20 s, so with as many polls waiting as
    threads (an RL batch of sample requests) any other request queued for a thread, unanswered,
    past the SDK's timeout. Here 4 threads and 6 polls on futures that cannot finish (seq_id gap):
    another request must still be answered at once."""

    with served("mock", tmp_path, worker_threads=4, gap_timeout_s=60) as (server, _, base):
        wire = Wire(server.url)
        model = wire.create_model(wire.session(), base)
        waiting = []
        for seq in range(2, 8):  # seq_id 1 never comes: all of these wait
            reply = wire.http.post("forward_backward", content=fb_body(model, seq, [1, 2, 3]), headers=proto_headers())
            waiting.append(reply.json()["request_id"])
        polls = [threading.Thread(target=wire.post, args=("retrieve_future", {"request_id": r})) for r in waiting]
        for t in polls:
            t.start()
        time.sleep(1.0)  # every poll is in
        started = time.monotonic()
        reply = wire.post("create_session", {"tags": [], "sdk_version": "0.38.0"})
        elapsed = time.monotonic() - started
        assert reply.status_code == 200
        assert elapsed < 5, f"a request waited {elapsed:.1f} s behind long polls for a worker thread"
        for t in polls:
            t.join(timeout=60)


def test_a_resent_unnamed_save_is_the_same_operation(mock_server: tuple[TinkerServer, Any, str]) -> None:
    """The issue: the SDK resends an unnamed ``save_weights_for_sampler`` with a new
    ``sampling_session_seq_id`` each attempt, and the server, hashing the whole body, refused the
    resend with ``ConflictError: seq_id 1 ... already used by a different request``."""
    server, _, base = mock_server
    wire = Wire(server.url)
    model = wire.create_model(wire.session(), base)
    first = {"model_id": model, "seq_id": 1, "sampling_session_seq_id": 0, "type": "save_weights_for_sampler"}
    original = wire.post("save_weights_for_sampler", first)
    resent = wire.post("save_weights_for_sampler", {**first, "sampling_session_seq_id": 1})
    assert original.status_code == 200 and resent.status_code == 200, resent.text
    assert resent.json()["request_id"] == original.json()["request_id"]
    assert "sampling_session_id" in wire.result(resent.json()["request_id"]).json()
    other = wire.post("save_weights_for_sampler", {**first, "path": "named", "sampling_session_seq_id": 2})
    assert other.status_code == 409, "a different operation under a used seq_id is still a conflict"


def test_requests_during_shutdown_get_a_typed_retryable_error(mock_server: tuple[TinkerServer, Any, str]) -> None:
    """The issue: an ``optim_step`` arriving during SIGTERM shutdown got a 500 (``sqlite3.
    ProgrammingError: Cannot operate on a closed database``). Now 503 ``ServerShutdown`` with
    ``x-should-retry: true`` (the SDK backs off and resends, e.g. to the restarted server)."""
    server, _, base = mock_server
    wire = Wire(server.url)
    model = wire.create_model(wire.session(), base)
    server.operations.close()  # what SIGTERM does first
    for endpoint, body in [
        ("optim_step", {"model_id": model, "seq_id": 1, "adam_params": ADAM}),
        ("create_session", {"tags": []}),
        ("retrieve_future", {"request_id": "nope"}),
    ]:
        reply = wire.post(endpoint, body)
        assert reply.status_code == 503, (endpoint, reply.status_code, reply.text)
        assert reply.json()["error"].startswith("ServerShutdown") and reply.headers["x-should-retry"] == "true"


def test_a_future_failed_at_shutdown_is_not_settled_twice(caplog: pytest.LogCaptureFixture) -> None:
    """The issue: on mock, ``operations.settle`` set an already failed future (``InvalidStateError``)."""
    from concurrent.futures import Future

    from tinker_std.server.failures import ServerShutdown
    from tinker_std.server.futures import chain

    work: Future[Any] = Future()
    answer: Future[Any] = Future()
    chain(work, answer)
    answer.set_exception(ServerShutdown("the server is shutting down"))  # close() got there first
    with caplog.at_level("ERROR"):
        work.set_result({"ok": True})  # the work finishes afterwards
    assert "InvalidStateError" not in caplog.text and "exception calling callback" not in caplog.text
    assert isinstance(answer.exception(), ServerShutdown)


def test_a_declared_shape_is_checked_before_allocation(mock_server: tuple[TinkerServer, Any, str]) -> None:
    """The issue: a ``sparse_csr`` ``weights`` of shape ``[1, 2**28]`` with no values made the server
    allocate ~3 GB for 14 s before a ``MemoryError``. Now a typed refusal naming the field, at once."""
    server, _, base = mock_server
    sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=[2, 3, 4], dtype="int64", shape=[3]),
            "weights": tinker.TensorData(
                data=[], dtype="float32", shape=[1, 2**28], sparse_crow_indices=[0, 0], sparse_col_indices=[]
            ),
        },
    )
    started = time.monotonic()
    with pytest.raises(Exception, match=r"LimitExceededError: data\[0\]\.loss_fn_inputs\.weights"):
        tc.forward_backward([datum], "cross_entropy").result()
    assert time.monotonic() - started < 10


def test_a_raw_optim_step_without_seq_id_is_refused_not_applied_twice(
    mock_server: tuple[TinkerServer, Any, str],
) -> None:
    """The issue: a raw ``optim_step`` without ``seq_id`` sent twice was applied twice (a resend
    cannot be told from a new step). Decision: a request that changes the model needs a ``seq_id``
    (the SDK always sends one); only a forward may come without."""
    server, _, base = mock_server
    wire = Wire(server.url)
    model = wire.create_model(wire.session(), base)
    for _ in range(2):
        reply = wire.post("optim_step", {"model_id": model, "adam_params": ADAM})
        assert reply.status_code == 400 and reply.json()["field"] == "seq_id", reply.text
    step = {"model_id": model, "seq_id": 1, "adam_params": ADAM}
    first, again = wire.post("optim_step", step).json(), wire.post("optim_step", step).json()
    assert first["request_id"] == again["request_id"]  # with a seq_id, a resend is the same step
    assert wire.result(first["request_id"]).json()["metrics"]["step:max"] == 1.0


def test_a_tenant_over_its_quota_gets_back_pressure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LIM-6: each key has a quota of unfinished requests; over it a new request is refused before
    admission with 429 (``x-should-retry: true``: the SDK backs off and resends) and long polls
    say ``queue_state: paused_capacity``. The request a model's lane waits for is never refused."""
    from tinker_std.server import futures

    monkeypatch.setattr(futures, "LONG_POLL_S", 0.5)
    with served("mock", tmp_path, max_queued_per_tenant=3, gap_timeout_s=60) as (server, _, base):
        wire = Wire(server.url)
        model = wire.create_model(wire.session(), base)
        waiting = []
        for seq in (2, 3, 4):  # seq_id 1 not yet sent: these wait, and fill the quota
            reply = wire.http.post("forward_backward", content=fb_body(model, seq, [1, 2, 3]), headers=proto_headers())
            waiting.append(reply.json()["request_id"])
        over = wire.http.post("forward_backward", content=fb_body(model, 5, [1, 2, 3]), headers=proto_headers())
        assert over.status_code == 429 and over.headers["x-should-retry"] == "true", over.text
        assert over.json()["error"].startswith("TenantQueueFull")
        poll = wire.post("retrieve_future", {"request_id": waiting[0]}).json()
        assert poll["type"] == "try_again" and poll["queue_state"] == "paused_capacity", poll
        first = wire.http.post("forward_backward", content=fb_body(model, 1, [1, 2, 3]), headers=proto_headers())
        assert first.status_code == 200, "the request the lane waits for must be admitted even at the quota"
        for request_id in [first.json()["request_id"], *waiting]:
            assert wire.result(request_id).status_code == 200
        again = wire.http.post("forward_backward", content=fb_body(model, 5, [1, 2, 3]), headers=proto_headers())
        assert again.status_code == 200 and wire.result(again.json()["request_id"]).status_code == 200


def test_the_sdk_waits_out_back_pressure_instead_of_failing(tmp_path: Path) -> None:
    """Through the SDK: 12 sample requests at once against a quota of 2 all complete (the SDK
    backs off on 429 and resends), and some were indeed pushed back."""
    import logging

    statuses: list[int] = []

    class Statuses(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            import json

            statuses.append(int(json.loads(record.getMessage())["status"]))

    handler = Statuses()
    logging.getLogger("tinker_std.server.access").addHandler(handler)
    logging.getLogger("tinker_std.server.access").setLevel(logging.INFO)
    try:
        with served("mock", tmp_path, max_queued_per_tenant=2) as (server, _, base):
            sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
            sampler = sdk.create_sampling_client(base_model=base)
            params = tinker.SamplingParams(max_tokens=16, seed=0)
            prompt = tinker.ModelInput.from_ints([1, 2, 3])
            futures = [sampler.sample(prompt, num_samples=2, sampling_params=params) for _ in range(12)]
            results = [f.result(timeout=240) for f in futures]
        assert all(len(r.sequences) == 2 for r in results)
        assert 429 in statuses, "the quota never pushed back: the test did not exercise back-pressure"
    finally:
        logging.getLogger("tinker_std.server.access").removeHandler(handler)


def test_finished_results_expire_after_the_result_ttl(tmp_path: Path) -> None:
    """The future store does not grow with every request ever answered: a result is dropped
    ``result_ttl_s`` after it settled, and a poll for it is then 410 ``RequestLost`` (typed,
    not a 404 the SDK would turn into a bare ``ValueError``); a fresh result is still served.
    The TTL is the server's option (``tinker-std serve --result-ttl-s``)."""
    args = build_parser().parse_args(["serve", "--result-ttl-s", "0.2"])
    with served("mock", tmp_path, result_ttl_s=args.result_ttl_s) as (server, _, base):
        _check_results_expire(server, base)


def _check_results_expire(server: TinkerServer, base: str) -> None:
    store = server.operations.futures
    assert store.result_ttl_s == 0.2
    wire = Wire(server.url)
    model_id = wire.create_model(wire.session(), base)

    def step(seq: int) -> str:
        submitted = wire.post("forward_backward", content=fb_body(model_id, seq, [1, 5, 9, 3]), headers=proto_headers())
        assert submitted.status_code == 200, submitted.text
        request_id = str(submitted.json()["request_id"])
        assert wire.result(request_id).status_code == 200
        return request_id

    old = step(1)
    time.sleep(0.3)
    swept_at = time.monotonic()
    fresh = step(2)  # storing sweeps what expired
    gone = wire.result(old)
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"].startswith("RequestLost: ") and "expired" in gone.json()["error"], gone.json()
    assert wire.result(fresh).status_code == 200
    stale = [p for p in store.pending() if p.settled_at is not None and p.settled_at < swept_at - 0.2]
    assert not stale, f"{len(stale)} results older than the TTL are still held"


def test_resent_requests_do_not_use_up_the_quota(tmp_path: Path) -> None:
    """A resend of an admitted request (same ``seq_id``, same body: the SDK retrying a submit whose
    answer it lost) answers the original request id and holds none of the tenant's quota (LIM-6):
    ten resends under a quota of 3 still leave room for the next request."""
    with served("mock", tmp_path, max_queued_per_tenant=3) as (server, _, base):
        wire = Wire(server.url)
        model = wire.create_model(wire.session(), base)
        first = wire.http.post("forward_backward", content=fb_body(model, 1, [1, 2, 3]), headers=proto_headers())
        assert first.status_code == 200, first.text
        for _ in range(10):
            again = wire.http.post("forward_backward", content=fb_body(model, 1, [1, 2, 3]), headers=proto_headers())
            assert again.status_code == 200, again.text
            assert again.json()["request_id"] == first.json()["request_id"]
        assert wire.result(first.json()["request_id"]).status_code == 200
        for seq in (2, 3, 4, 5):
            step = wire.post("optim_step", {"model_id": model, "seq_id": seq, "adam_params": {"learning_rate": 1e-3}})
            assert step.status_code == 200, f"seq_id {seq}: {step.text}"
            assert wire.result(step.json()["request_id"]).status_code == 200
