"""The server's fast path (issue 23 item 3), through the official SDK 0.38 and raw wire calls on
loopback: a result is encoded once, by the thread that settles it, and every ``retrieve_future``
for it answers those same bytes; cheap endpoints run on the event loop (no worker-thread hop);
the GIL switch interval is lowered while a server serves and restored after. Speed itself is
measured by bench/server_overhead.py, never here."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.server import TinkerServer, protobuf
from tinker_std.server.http import DEFAULT_GIL_SWITCH_INTERVAL_S

from server_support import KEY, Wire, fb_body, proto_headers, sdk_datum, served

tinker = pytest.importorskip("tinker")
os.environ["TINKER_TELEMETRY"] = "0"

TOKENS = [1, 5, 9, 14, 3, 7]


@pytest.fixture
def mock_server(tmp_path: Path) -> Iterator[tuple[TinkerServer, ts.ServiceClient, str]]:
    with served("mock", tmp_path) as triple:
        yield triple


def test_a_result_is_encoded_once_and_every_poll_answers_the_same_bytes(
    mock_server: tuple[TinkerServer, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _, base = mock_server
    encoded: list[threading.Thread] = []
    original = protobuf.encode_forward_backward_output

    def counting(result: Any) -> bytes:
        encoded.append(threading.current_thread())
        return original(result)

    monkeypatch.setattr(protobuf, "encode_forward_backward_output", counting)
    wire = Wire(server.url)
    model_id = wire.create_model(wire.session(), base)
    # the step's outcome is settled before the step returns (the worst case of a fast backend):
    # its future must be stored before the step starts, or the event loop encodes it
    model = server.operations.state.model("default", model_id)
    client = model.ready()
    real = client.forward_backward

    def settled_first(*args: Any, **kwargs: Any) -> Any:
        outcome = real(*args, **kwargs)
        outcome.result(timeout=30)
        return outcome

    monkeypatch.setattr(client, "forward_backward", settled_first)
    submitted = wire.post("forward_backward", content=fb_body(model_id, 1, TOKENS), headers=proto_headers())
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    first = wire.result(request_id)
    again = wire.result(request_id)  # the SDK's retry of a poll whose answer was lost
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"].startswith("application/x-protobuf")
    assert first.content == again.content and len(first.content) > 0
    assert len(encoded) == 1, f"the result was encoded {len(encoded)} times"
    assert encoded[0].name != "tinker-std-server", "the event loop encoded the result"
    pending = [p for p in server.operations.futures.pending() if p.kind == "forward_backward"]
    assert len(pending) == 1 and pending[0].reply is not None and pending[0].reply.body == first.content


def test_a_failed_request_answers_its_error_once_settled(mock_server: tuple[TinkerServer, Any, str]) -> None:
    server, _, base = mock_server
    wire = Wire(server.url)
    model_id = wire.create_model(wire.session(), base)
    bad = wire.post("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {"learning_rate": -1.0}})
    assert bad.status_code == 200, bad.text
    answer = wire.result(bad.json()["request_id"])
    assert answer.status_code == 200 and "BadRequestError" in answer.json()["error"], answer.text
    assert answer.json()["category"] == "user"


def test_submits_of_a_training_step_run_on_the_event_loop(
    mock_server: tuple[TinkerServer, Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``forward_backward`` and ``optim_step`` are admitted on the server's event loop (a worker
    thread would add two thread hops); their work still runs on the model's lane, in order."""
    server, _, base = mock_server
    sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    state = server.operations.state
    admitted_on: list[str] = []
    lookup = state.model

    def recording(tenant: str, model_id: Any) -> Any:  # every training request looks its model up
        admitted_on.append(threading.current_thread().name)
        return lookup(tenant, model_id)

    monkeypatch.setattr(state, "model", recording)
    fb = tc.forward_backward([sdk_datum(tinker, TOKENS)], "cross_entropy")
    step = tc.optim_step(tinker.AdamParams(learning_rate=1e-2))
    assert fb.result().loss_fn_outputs and step.result() is not None
    assert admitted_on == ["tinker-std-server", "tinker-std-server"], admitted_on


def test_the_switch_interval_is_lowered_while_serving_and_restored_after(tmp_path: Path) -> None:
    before = sys.getswitchinterval()
    assert before > DEFAULT_GIL_SWITCH_INTERVAL_S  # Python's default, 5 ms
    with served("mock", tmp_path) as (server, _, _):
        assert sys.getswitchinterval() == pytest.approx(DEFAULT_GIL_SWITCH_INTERVAL_S)
        with served("mock", tmp_path, gil_switch_interval_s=None):
            pass  # a second server that leaves it alone does not restore it under the first
        assert sys.getswitchinterval() == pytest.approx(DEFAULT_GIL_SWITCH_INTERVAL_S)
        assert Wire(server.url).http.get("healthz").json() == {"status": "ok"}
    assert sys.getswitchinterval() == pytest.approx(before)


def test_a_decoded_forward_backward_equals_the_validated_types_and_a_bad_shape_is_refused() -> None:
    """The decoder builds its datums without re-validating them (they are on a step's critical
    path); they must equal what full pydantic validation makes of the same values, float32
    rounding included, and a dense tensor whose shape disagrees with its values is refused
    naming that tensor."""
    from tinker.proto import tinker_public_pb2 as pb

    weights = [0.1, 1e-8, float("inf"), -2.5, 3.0]
    msg = pb.ForwardBackwardRequest.FromString(fb_body("m", 1, TOKENS))
    dense = msg.data[0].loss_fn_inputs["weights"]
    dense.dense = np.asarray(weights, dtype="<f4").tobytes()
    targets = msg.data[0].loss_fn_inputs["target_tokens"]
    targets.dense, targets.dtype = np.asarray(TOKENS[1:], dtype="<i4").tobytes(), pb.DTYPE_INT32
    call = protobuf.decode_forward_backward(msg.SerializeToString())
    expected = ts.Datum(
        model_input=ts.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={
            "target_tokens": ts.TensorData(data=TOKENS[1:], dtype="int64", shape=[5]),
            "weights": ts.TensorData(data=weights, dtype="float32", shape=[5]),
        },
    )
    assert call.data == [expected]
    assert call.data[0].loss_fn_inputs["weights"].data[1] == np.float32(1e-8)  # float32-rounded
    dense.shape[:] = [2, 3]
    with pytest.raises(ts.BadRequestError) as refused:
        protobuf.decode_forward_backward(msg.SerializeToString())
    assert refused.value.field == "data[0].loss_fn_inputs.weights", refused.value


def test_a_training_steps_requests_answer_as_their_routes_and_are_counted(tmp_path: Path) -> None:
    """``hot_routes.HotRoutes`` answers ``forward_backward``, ``optim_step`` and ``retrieve_future``
    without Starlette's router: its refusals carry the same status, JSON error and
    ``x-should-retry`` as every route's, a streamed body over the limit is 413, and the metrics
    label each request with its endpoint (the route it left in the scope)."""
    with served("mock", tmp_path, max_body_bytes=4096) as (server, _, base):
        wire = Wire(server.url)
        model_id = wire.create_model(wire.session(), base)
        unknown = wire.post("retrieve_future", {"request_id": "nope"})
        assert unknown.status_code == 404 and "x-should-retry" not in unknown.headers, unknown.text
        garbage = wire.http.post("forward_backward", content=b"\xff\x00garbage", headers=proto_headers())
        assert garbage.status_code == 400 and garbage.headers["x-should-retry"] == "false", garbage.text
        assert garbage.json()["error"].startswith("BadRequestError") and garbage.json()["category"] == "user"
        assert garbage.headers["content-type"] == "application/json"
        streamed = wire.http.post("optim_step", content=iter([b"{" + b" " * 5000 + b"}"]))  # no content-length
        assert streamed.status_code == 413 and streamed.headers["x-should-retry"] == "false", streamed.text
        fine = wire.post("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {"learning_rate": 1e-3}})
        assert fine.status_code == 200 and wire.result(fine.json()["request_id"]).status_code == 200
        scrape = wire.http.get(server.url + "/metrics").text
        for endpoint, status in (("retrieve_future", "404"), ("forward_backward", "400"), ("optim_step", "413")):
            assert f'endpoint="{endpoint}",method="POST",status="{status}"' in scrape, (endpoint, status)
