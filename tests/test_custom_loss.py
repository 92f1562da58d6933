"""Server-side custom losses (spec 12, CLG) through the official SDK 0.38 over real HTTP.

The server advertises ``custom_loss_server_side``, so ``ServiceClient.create_custom_loss`` traces
the loss with torch.fx and uploads its graph, and ``forward_backward_custom`` sends one
``forward_backward(loss_fn="custom")``. The reference is the SDK's own client-side fallback for
the same traced loss: the handle with ``loss_id=None`` (the SDK then runs the graph on the client
and sends the surrogate weights). Two training clients with the same seed take one step each;
loss, metrics, the accumulated gradient and the weights after ``optim_step`` must agree within
1e-5 relative + 1e-6 absolute, on the mock backend and on the torch backend's tiny model (both
sides compute in float32 on the same backend and send the same surrogate weights; only the order
of float sums may differ).

Forbidden graphs are sent as the SDK's own JSON with a node swapped for one the allow-list lacks
(the SDK's tracer refuses them on the client, so a hostile client must hand-write them), and must be
refused with a ``BadRequestError`` naming the node before anything is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinker_std.custom_loss import validate_loss
from tinker_std.errors import BadRequestError

from server_support import KEY, Wire, served

tinker = pytest.importorskip("tinker")
types = tinker.types

RTOL, ATOL = 1e-5, 1e-6


def pairwise(logprobs: Any, ref_logprobs: Any, sign: Any, beta: Any) -> Any:
    """A DPO-like loss on one datum: ``sign`` (+1 chosen, -1 rejected positions, 0 prompt)."""
    margin = ((logprobs - ref_logprobs) * sign).sum()
    loss = -F.logsigmoid(beta * margin) + 0.01 * torch.exp(logprobs).mean()
    return loss, {"custom/margin:mean": margin, "custom/tokens:sum": (sign != 0).sum().to(torch.float32)}


RANKS = {"logprobs": 1, "ref_logprobs": 1, "sign": 1, "beta": 0}


def _f32(values: list[float]) -> Any:
    return types.TensorData(data=values, dtype="float32", shape=[len(values)])


def _data() -> list[Any]:
    rows = [
        ([1, 5, 9, 14, 3, 7], [0.0, 1.0, 1.0, -1.0, -1.0], 0.5),
        ([4, 4, 8, 2, 11], [0.0, 0.0, 1.0, -1.0], 2.0),
    ]
    out = []
    for tokens, sign, beta in rows:
        n = len(tokens) - 1
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": tokens[1:],
                    "ref_logprobs": _f32([-2.0 - 0.1 * i for i in range(n)]),
                    "sign": _f32(sign),
                    "beta": types.TensorData(data=[beta], dtype="float32", shape=[]),
                },
            )
        )
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    with served("mock", tmp_path_factory.mktemp("customloss")) as (srv, _service, base):
        yield srv, tinker.ServiceClient(base_url=srv.url, api_key=KEY), base


@pytest.fixture(scope="module", params=["mock", "torch"])
def any_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A served mock backend, and the torch backend's tiny model (a real transformers + peft LoRA)."""
    if request.param == "mock":
        yield request.getfixturevalue("server")
        return
    with served("torch", tmp_path_factory.mktemp("customloss-torch")) as (srv, _service, base):
        yield srv, tinker.ServiceClient(base_url=srv.url, api_key=KEY), base


def _state(srv: Any, model_id: str) -> Any:
    return srv.operations.state.model("default", model_id).ready().read_state().result()


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=f"{what} {key}")


def test_server_side_loss_matches_the_sdk_client_side_fallback(any_server: tuple[Any, Any, str]) -> None:
    srv, sdk, base = any_server
    handle = sdk.create_custom_loss(pairwise, RANKS).result(timeout=60)
    assert handle.loss_id is not None, "the server advertises custom_loss_server_side: the loss is uploaded"
    local = dataclasses.replace(handle, loss_id=None)  # the SDK's client-side fallback for the same graph
    uploaded = sdk.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    fallback = sdk.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    data = _data()

    out_s = uploaded.forward_backward_custom(data, handle).result(timeout=60)
    out_c = fallback.forward_backward_custom(data, local).result(timeout=60)
    for key in ("loss:sum", "custom/margin:mean", "custom/tokens:sum"):
        assert out_s.metrics[key] == pytest.approx(out_c.metrics[key], rel=RTOL, abs=ATOL), key
    assert out_s.metrics["custom/tokens:sum"] == 6.0  # summed over datums; the margin is averaged
    # the loss is not trivially zero: its value is the independent torch evaluation of `pairwise`
    lps = [torch.tensor(o["logprobs"].data) for o in out_c.loss_fn_outputs]
    expected = sum(
        float(pairwise(lp, d.loss_fn_inputs["ref_logprobs"].to_torch(), d.loss_fn_inputs["sign"].to_torch(),
                       d.loss_fn_inputs["beta"].to_torch().reshape(()))[0])
        for lp, d in zip(lps, data, strict=True)
    )  # fmt: skip
    assert out_s.metrics["loss:sum"] == pytest.approx(expected, rel=RTOL, abs=ATOL)

    state_s, state_c = _state(srv, uploaded.model_id), _state(srv, fallback.model_id)
    assert any(np.abs(g).max() > 0 for g in state_s.grads.values()), "the custom loss left no gradient"
    _close(dict(state_s.grads), dict(state_c.grads), "gradient")
    uploaded.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    fallback.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    _close(dict(_state(srv, uploaded.model_id).weights), dict(_state(srv, fallback.model_id).weights), "weights")


def _graph_json() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tinker.lib.public_interfaces.custom_loss import encode_graph, trace_loss

    handle = trace_loss(pairwise, RANKS, "s")
    return [i.model_dump() for i in handle.inputs], encode_graph(handle).model_dump(mode="json")


def _swap(graph: dict[str, Any], node: str, **change: Any) -> dict[str, Any]:
    nodes = [dict(n, **change) if n["name"] == node else n for n in graph["nodes"]]
    return {**graph, "nodes": nodes}


FORBIDDEN = {
    "os.system": {"op": "call_function", "target": "os.system", "args": ["touch /tmp/pwned"]},
    "builtins.eval": {"op": "call_function", "target": "builtins.eval", "args": ["1"]},
    "torch.save": {"op": "call_function", "target": "torch.save"},
    "torch.load": {"op": "call_function", "target": "torch.load"},
    "torch.zeros": {"op": "call_function", "target": "torch.zeros", "args": [1 << 40]},
    "subprocess": {"op": "call_function", "target": "subprocess.run"},
    "method __reduce__": {"op": "call_method", "target": "__reduce__"},
    "method backward": {"op": "call_method", "target": "backward"},
    "method in place": {"op": "call_method", "target": "exp_"},
    "method tolist": {"op": "call_method", "target": "tolist"},
    "get_attr": {"op": "get_attr", "target": "__class__", "args": []},
    "call_module": {"op": "call_module", "target": "linear"},
    "getattr dunder": {"op": "call_function", "target": "getattr", "args": [{"ref": "logprobs"}, "__class__"]},
}


@pytest.mark.parametrize("case", list(FORBIDDEN))
def test_a_graph_outside_the_allow_list_is_refused_naming_the_node(case: str) -> None:
    inputs, graph = _graph_json()
    bad = _swap(graph, "sub", **FORBIDDEN[case])
    with pytest.raises(BadRequestError) as info:
        validate_loss("pairwise", inputs, bad)
    assert "graph.nodes[4] ('sub')" in info.value.field, info.value


def test_malformed_graphs_are_refused() -> None:
    inputs, graph = _graph_json()
    validate_loss("pairwise", inputs, graph)  # the untouched graph is valid
    cases = [
        (_swap(graph, "mul", args=[{"ref": "later"}, 1]), "graph.nodes[5]"),  # a forward reference
        ({**graph, "nodes": graph["nodes"] * 20}, "graph.nodes"),  # too many nodes
        ({**graph, "nodes": [n for n in graph["nodes"] if n["op"] != "output"]}, "graph.nodes"),
        (_swap(graph, "beta", target="os"), "graph.nodes[3] ('beta')"),
        (_swap(graph, "sub", args=[{"ref": "logprobs"}, {"code": "x"}]), "graph.nodes[4]"),
        (_swap(graph, "sub", args=[{"ref": "logprobs"}, {"dtype": "__builtins__"}]), "graph.nodes[4]"),
    ]
    for bad, field in cases:
        with pytest.raises(BadRequestError) as info:
            validate_loss("pairwise", inputs, bad)
        assert info.value.field.startswith(field), (field, info.value)
    with pytest.raises(BadRequestError, match="inputs"):
        validate_loss("pairwise", [{"name": "weights", "rank": 1}], graph)


def test_refused_uploads_store_nothing_and_bad_use_is_typed(server: tuple[Any, Any, str], tmp_path: Path) -> None:
    srv, sdk, base = server
    wire = Wire(srv.url)
    session = wire.session()
    inputs, graph = _graph_json()
    body = {"session_id": session, "custom_loss_seq_id": 0, "name": "pairwise", "inputs": inputs}
    bad = wire.post("create_custom_loss", {**body, "graph": _swap(graph, "sub", **FORBIDDEN["os.system"])})
    assert bad.status_code == 400 and "BadRequestError" in bad.json()["error"], bad.text
    assert "graph.nodes[4] ('sub')" in bad.json()["error"] and "os.system" in bad.json()["error"]
    assert srv.operations.custom_losses._losses.get(session, {}) == {}, "a refused loss was stored"
    # the same seq id is still free: the valid graph is stored under it
    good = wire.post("create_custom_loss", {**body, "graph": graph})
    assert good.status_code == 200, good.text
    loss_id = wire.result(good.json()["request_id"]).json()["loss_id"]
    assert loss_id == f"{session}:loss:0"
    # a retry answers the original request; another body under the same seq id is a conflict
    again = wire.post("create_custom_loss", {**body, "graph": graph})
    assert again.json()["request_id"] == good.json()["request_id"], again.text
    other = wire.post("create_custom_loss", {**body, "name": "renamed", "graph": graph})
    assert other.status_code == 409 and "ConflictError" in other.json()["error"], other.text
    # another session's model cannot use it, and a datum without an input the loss reads is refused
    sdk = tinker.ServiceClient(base_url=srv.url, api_key=KEY)  # a session of its own
    handle = sdk.create_custom_loss(pairwise, RANKS).result(timeout=60)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    before = _state(srv, tc.model_id).weights
    foreign = dataclasses.replace(handle, loss_id=loss_id)
    # errors of a sequenced request come back through its future, typed by name in the message
    with pytest.raises(tinker.RequestFailedError, match="NotFoundError: no custom loss"):
        tc.forward_backward_custom(_data(), foreign).result(timeout=60)
    stripped = [types.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs}) for d in _data()]
    del stripped[1].loss_fn_inputs["sign"]
    with pytest.raises(tinker.RequestFailedError, match=r"BadRequestError: data\[1\].loss_fn_inputs.sign"):
        tc.forward_backward(stripped, "custom", {"loss_id": handle.loss_id}).result(timeout=60)
    state = _state(srv, tc.model_id)
    assert all(not np.any(g) for g in state.grads.values()), "a refused request changed the gradient"
    _close(dict(before), dict(state.weights), "weights")
    # a session's losses go with it
    assert wire.post(f"sessions/{session}/finish").status_code == 200
    wire.post("create_custom_loss", {**body, "session_id": wire.session(), "graph": graph})
    assert session not in srv.operations.custom_losses._losses


def test_runtime_guards_refuse_python_blowups_and_oversized_steps() -> None:
    """Valid nodes whose values would exhaust the server: refused before the step runs (CLG-3)."""
    from tinker_std.custom_loss import run_graph

    inputs, graph = _graph_json()
    lp = torch.randn(5, requires_grad=True)
    tensors = [lp, torch.randn(5), torch.ones(5), torch.tensor(0.5)]
    nodes = graph["nodes"]
    cases = {
        "exponent": {"op": "call_function", "target": "operator.pow", "args": [10, 10**9]},
        "string": {"op": "call_function", "target": "operator.mul", "args": ["a", 10**12]},
        "broadcast": {"op": "call_method", "target": "expand", "args": [{"ref": "logprobs"}, 1 << 20, 5]},
    }
    for change in cases.values():
        bad = {**graph, "nodes": [dict(n, **change) if n["name"] == "sub" else n for n in nodes]}
        with pytest.raises(ValueError, match="node 'sub'"):
            run_graph(validate_loss("pairwise", inputs, bad), tensors)


def test_forward_with_an_uploaded_loss_scores_it_without_gradient(any_server: tuple[Any, Any, str]) -> None:
    """CLG-5 over HTTP: the SDK's ``forward(data, "custom", {"loss_id": ...})`` answers the loss and
    its metrics (those ``forward_backward`` reports for the same weights) and leaves no gradient."""
    srv, _sdk, base = any_server
    sdk = tinker.ServiceClient(base_url=srv.url, api_key=KEY)  # a session of its own: the SDK creates a loss once
    handle = sdk.create_custom_loss(pairwise, RANKS).result(timeout=60)
    scored = sdk.create_lora_training_client(base_model=base, rank=4, seed=7).result()
    trained = sdk.create_lora_training_client(base_model=base, rank=4, seed=7).result()
    out_f = scored.forward(_data(), "custom", {"loss_id": handle.loss_id}).result(timeout=60)
    out_b = trained.forward_backward(_data(), "custom", {"loss_id": handle.loss_id}).result(timeout=60)
    assert set(out_f.metrics) == {"loss:sum", "custom/margin:mean", "custom/tokens:sum"}
    for key in out_f.metrics:
        assert out_f.metrics[key] == pytest.approx(out_b.metrics[key], rel=RTOL, abs=ATOL), key
    assert all(not np.any(g) for g in _state(srv, scored.model_id).grads.values()), "forward left a gradient"
    assert any(np.any(g) for g in _state(srv, trained.model_id).grads.values())
