"""Custom loss graphs (spec 12, CLG-1..CLG-6): the allow-list validator and the graph
interpreter of ``tinker_std.custom_loss``, run as the loss of ``forward_backward_custom`` on the
backend under test (in one pass where it declares ``one_pass_datum_loss``, CLG-4), ``forward``
with a graph loss (CLG-5) and the in-process ``ServiceClient.create_custom_loss`` (CLG-6). The
graph below is what the SDK 0.38 sends for

    def pg(logprobs, advantages, scale):
        pg = (logprobs * advantages).sum()
        p = torch.exp(logprobs).mean()
        return scale * p - pg, {"custom/pg:sum": pg, "custom/p:mean": p}

(``ServiceClient.create_custom_loss(pg, {"logprobs": 1, "advantages": 1, "scale": 0})``), written
out here so the suite does not need the SDK.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import tinker_std as ts
from tinker_std.conformance.helpers import forward_logprobs, logprobs_of
from tinker_std.conformance.loss_checks import Factory, assert_same_gradient
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_close, assert_replay
from tinker_std.custom_loss import check_graph_inputs, graph_loss_fn, validate_loss
from tinker_std.errors import BadRequestError, NotFoundError


def _ref(name: str) -> dict[str, str]:
    return {"ref": name}


def _node(op: str, name: str, target: str, *args: Any) -> dict[str, Any]:
    return {"op": op, "name": name, "target": target, "args": list(args), "kwargs": {}}


INPUTS = [{"name": "logprobs", "rank": 1}, {"name": "advantages", "rank": 1}, {"name": "scale", "rank": 0}]
GRAPH: dict[str, Any] = {
    "format": 1,
    "nodes": [
        _node("placeholder", "logprobs", "logprobs"),
        _node("placeholder", "advantages", "advantages"),
        _node("placeholder", "scale", "scale"),
        _node("call_function", "mul", "operator.mul", _ref("logprobs"), _ref("advantages")),
        _node("call_method", "sum_1", "sum", _ref("mul")),
        _node("call_function", "exp", "torch.exp", _ref("logprobs")),
        _node("call_method", "mean", "mean", _ref("exp")),
        _node("call_function", "mul_1", "operator.mul", _ref("scale"), _ref("mean")),
        _node("call_function", "sub", "operator.sub", _ref("mul_1"), _ref("sum_1")),
        _node(
            "output",
            "output",
            "output",
            {"tuple": [_ref("sub"), {"dict": {"custom/pg:sum": _ref("sum_1"), "custom/p:mean": _ref("mean")}}]},
        ),
    ],
}


def _python_pg(data: list[ts.Datum], lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The same loss written directly (the reference CLG-2 compares the graph with)."""
    total = torch.zeros(())
    pg_sum, p_sum = 0.0, 0.0
    for d, lp in zip(data, lps, strict=True):
        pg = (lp * d.loss_fn_inputs["advantages"].to_torch()).sum()
        p = torch.exp(lp).mean()
        total = total + d.loss_fn_inputs["scale"].to_torch().reshape(()) * p - pg
        pg_sum, p_sum = pg_sum + float(pg), p_sum + float(p)
    return total, {"custom/pg:sum": pg_sum, "custom/p:mean": p_sum / len(data)}


def _data(v: int) -> list[ts.Datum]:
    rows = [([3, 9, 14, 2, 7, 11], [0.0, 1.5, -0.5, 2.0, 1.0], 0.5), ([5, 1, 8, 13], [1.0, -1.0, 0.25], 2.0)]
    return [
        ts.Datum(
            model_input=ts.ModelInput.from_ints([t % v for t in tokens[:-1]]),
            loss_fn_inputs={
                "target_tokens": ts.TensorData(data=[t % v for t in tokens[1:]], dtype="int64", shape=[len(adv)]),
                "advantages": ts.TensorData(data=adv, dtype="float32", shape=[len(adv)]),
                "scale": ts.TensorData(data=[scale], dtype="float32", shape=[]),
            },
        )
        for tokens, adv, scale in rows
    ]


@pytest.mark.spec("CLG-1")
@pytest.mark.parametrize(
    "node",
    [
        _node("call_function", "mul", "os.system", "true"),
        _node("call_function", "mul", "builtins.eval", "1"),
        _node("call_function", "mul", "torch.save", _ref("logprobs"), "/tmp/x"),
        _node("call_function", "mul", "torch.zeros", 1 << 40),
        _node("call_method", "mul", "exp_", _ref("logprobs")),
        _node("call_method", "mul", "__reduce_ex__", _ref("logprobs"), 2),
        _node("call_function", "mul", "getattr", _ref("logprobs"), "__class__"),
        _node("get_attr", "mul", "weight"),
        _node("call_module", "mul", "linear", _ref("logprobs")),
    ],
    ids=[
        "os.system",
        "eval",
        "torch.save",
        "torch.zeros",
        "in-place",
        "dunder-method",
        "getattr",
        "get_attr",
        "module",
    ],
)
def test_a_graph_outside_the_allow_list_is_refused_naming_the_node(node: dict[str, Any]) -> None:
    validate_loss("pg", INPUTS, GRAPH)  # the graph itself is valid
    bad = copy.deepcopy(GRAPH)
    bad["nodes"][3] = node
    try:
        validate_loss("pg", INPUTS, bad)
    except BadRequestError as exc:
        assert exc.field == "graph.nodes[3] ('mul')", f"[CLG-1] the refusal names {exc.field!r}, not the node"
    else:
        raise AssertionError(f"[CLG-1] a graph calling {node['target']!r} ({node['op']}) was accepted")


@pytest.mark.spec("CLG-2")
def test_a_graph_loss_equals_its_python_definition(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    data = _data(conformance_backend.vocab_size)
    graph, direct = make_training_client(), make_training_client()
    out_g = graph.forward_backward_custom(data, graph_loss_fn(validate_loss("pg", INPUTS, GRAPH))).result()
    out_d = direct.forward_backward_custom(data, _python_pg).result()
    assert_same_gradient(graph, direct, conformance_backend, "CLG-2", "graph loss vs the same loss in Python")
    for key in ("loss:sum", "custom/pg:sum", "custom/p:mean"):
        assert key in out_g.metrics, f"[CLG-2] metric {key} missing"
        assert_close(out_g.metrics[key], out_d.metrics[key], "sum", "CLG-2", what=key)


@pytest.mark.spec("CLG-3")
def test_inputs_are_checked_and_a_failing_graph_changes_nothing(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    data = _data(conformance_backend.vocab_size)
    graph = validate_loss("pg", INPUTS, GRAPH)
    missing = [data[0], ts.Datum(model_input=data[1].model_input, loss_fn_inputs={**data[1].loss_fn_inputs})]
    del missing[1].loss_fn_inputs["advantages"]
    wrong_rank = [data[0], ts.Datum(model_input=data[1].model_input, loss_fn_inputs={**data[1].loss_fn_inputs})]
    wrong_rank[1].loss_fn_inputs["scale"] = ts.TensorData(data=[1.0, 2.0], dtype="float32", shape=[2])
    for bad, field in ((missing, "data[1].loss_fn_inputs.advantages"), (wrong_rank, "data[1].loss_fn_inputs.scale")):
        try:
            check_graph_inputs(graph, bad)
        except BadRequestError as exc:
            assert exc.field == field, f"[CLG-3] the refusal names {exc.field!r}, not {field!r}"
        else:
            raise AssertionError(f"[CLG-3] {field} was not checked")
    # advantages one position short: the graph fails while it runs, after the forward pass
    short = [ts.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs}) for d in data]
    adv = short[0].loss_fn_inputs["advantages"].data[:-1]
    short[0].loss_fn_inputs["advantages"] = ts.TensorData(data=adv, dtype="float32", shape=[len(adv)])
    tc, twin = make_training_client(), make_training_client()
    with pytest.raises(ts.RequestFailedError):
        tc.forward_backward_custom(short, graph_loss_fn(graph)).result()
    assert_same_gradient(tc, twin, conformance_backend, "CLG-3", "a failed graph loss must accumulate nothing")
    plain = [
        ts.Datum(model_input=d.model_input, loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"]})
        for d in data
    ]
    for i, (a, b) in enumerate(zip(forward_logprobs(tc, plain), forward_logprobs(twin, plain), strict=True)):
        assert_replay(a, b, "token", "CLG-3", what=f"datum {i}: a failed graph loss changed the model")


def pg(logprobs: Any, advantages: Any, scale: Any) -> Any:
    """The loss of ``GRAPH``, as a user passes it to ``create_custom_loss``."""
    pg = (logprobs * advantages).sum()
    p = torch.exp(logprobs).mean()
    return scale * p - pg, {"custom/pg:sum": pg, "custom/p:mean": p}


RANKS = {"logprobs": 1, "advantages": 1, "scale": 0}


@pytest.mark.spec("CLG-4")
def test_a_graph_loss_gives_the_two_pass_result(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    data = _data(conformance_backend.vocab_size)
    graph = validate_loss("pg", INPUTS, GRAPH)
    engine, two_pass = make_training_client(), make_training_client()
    out_e = engine.run_graph_loss(data, graph, backward=True).result()  # the backend's own path
    out_t = two_pass.forward_backward_custom(data, _python_pg).result()  # FB-11: forward + surrogate
    for key in ("loss:sum", "surrogate_loss:sum", "custom/pg:sum", "custom/p:mean"):
        assert key in out_e.metrics, f"[CLG-4] metric {key} missing"
        assert_close(out_e.metrics[key], out_t.metrics[key], "sum", "CLG-4", what=key)
    for i, (a, b) in enumerate(zip(logprobs_of(out_e), logprobs_of(out_t), strict=True)):
        assert_close(a, b, "token", "CLG-4", what=f"datum {i} logprobs")
    assert_same_gradient(engine, two_pass, conformance_backend, "CLG-4", "graph loss vs the two-pass surrogate")


@pytest.mark.spec("CLG-5")
def test_forward_with_a_graph_loss_scores_it_without_gradient(
    service: ts.ServiceClient, conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    data = _data(conformance_backend.vocab_size)
    handle = service.create_custom_loss(pg, RANKS).result()
    assert handle.loss_id is not None, "[CLG-5] a handle from create_custom_loss carries its loss_id"
    scored, trained, untouched = make_training_client(), make_training_client(), make_training_client()
    out_f = scored.forward(data, "custom", {"loss_id": handle.loss_id}).result()
    out_b = trained.forward_backward(data, "custom", {"loss_id": handle.loss_id}).result()
    assert "surrogate_loss:sum" not in out_f.metrics, "[CLG-5] forward reported a surrogate (a backward phase)"
    for key in ("loss:sum", "custom/pg:sum", "custom/p:mean"):
        assert key in out_f.metrics, f"[CLG-5] metric {key} missing"
        assert_close(out_f.metrics[key], out_b.metrics[key], "sum", "CLG-5", what=f"{key}: forward vs forward_backward")
    for i, (a, b) in enumerate(zip(logprobs_of(out_f), logprobs_of(out_b), strict=True)):
        assert_close(a, b, "token", "CLG-5", what=f"datum {i} logprobs")
    missing = [data[0], ts.Datum(model_input=data[1].model_input, loss_fn_inputs={**data[1].loss_fn_inputs})]
    del missing[1].loss_fn_inputs["advantages"]
    try:
        scored.forward(missing, "custom", {"loss_id": handle.loss_id})
    except BadRequestError as exc:
        assert exc.field == "data[1].loss_fn_inputs.advantages", f"[CLG-5] the refusal names {exc.field!r}"
    else:
        raise AssertionError("[CLG-5] forward with a graph loss did not check its inputs")
    with pytest.raises(NotFoundError):
        scored.forward(data, "custom", {"loss_id": handle.loss_id + "9"}).result()
    assert_same_gradient(scored, untouched, conformance_backend, "CLG-5", "forward with a graph loss")


def _allocating(logprobs: Any) -> Any:
    noise = torch.rand_like(logprobs)
    return (logprobs * noise).sum(), {}


def _two_first(advantages: Any, logprobs: Any) -> Any:
    return (logprobs * advantages).sum(), {}


@pytest.mark.spec("CLG-6")
def test_create_custom_loss_in_process_uses_the_allow_list(
    service: ts.ServiceClient, conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    for fn, ranks, field in (
        (_allocating, {"logprobs": 1}, "graph.nodes[1] ('rand_like')"),
        (_two_first, {"advantages": 1, "logprobs": 1}, "fn"),
        (pg, {"logprobs": 1, "advantages": 1}, "input_ranks"),
    ):
        try:
            service.create_custom_loss(fn, ranks)
        except BadRequestError as exc:
            assert exc.field == field, f"[CLG-6] the refusal of {fn.__name__} names {exc.field!r}, not {field!r}"
        else:
            raise AssertionError(f"[CLG-6] create_custom_loss accepted {fn.__name__} ({field})")
    handle = service.create_custom_loss(pg, RANKS).result()
    assert handle.name == "pg" and [(i.name, i.rank) for i in handle.inputs] == list(RANKS.items()), (
        f"[CLG-6] the handle's name and inputs are {handle.name!r} {handle.inputs!r}"
    )
    assert handle.loss_id is not None and handle.loss_id.startswith(f"{handle.session_id}:loss:"), (
        f"[CLG-6] loss_id {handle.loss_id!r} is not '{{session_id}}:loss:{{n}}'"
    )
    data = _data(conformance_backend.vocab_size)
    graph, direct = make_training_client(), make_training_client()
    out_g = graph.forward_backward_custom(data, handle).result()
    out_d = direct.forward_backward_custom(data, _python_pg).result()
    for key in ("loss:sum", "custom/pg:sum", "custom/p:mean"):
        assert key in out_g.metrics, f"[CLG-6] metric {key} missing"
        assert_close(out_g.metrics[key], out_d.metrics[key], "sum", "CLG-6", what=key)
    assert_same_gradient(graph, direct, conformance_backend, "CLG-6", "a create_custom_loss handle")
    other = ts.LossHandle(name="pg", inputs=handle.inputs, session_id="elsewhere", graph=None, loss_id=handle.loss_id)
    try:
        graph.forward_backward_custom(data, other)
    except BadRequestError as exc:
        assert exc.field == "loss_fn", f"[CLG-6] a foreign handle's refusal names {exc.field!r}"
    else:
        raise AssertionError("[CLG-6] a handle of another session was accepted")
