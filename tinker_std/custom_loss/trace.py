"""Tracing a per-datum loss in process (``ServiceClient.create_custom_loss``, spec CLG-6).

``trace_loss(fn, input_ranks)`` traces ``fn(logprobs, *inputs) -> (loss, metrics)`` with
``torch.fx``, writes the graph as the wire data the SDK uploads (``CustomLossGraph`` format 1:
nodes with encoded arguments) and hands that data to ``validate_loss``, the server's own
validator: the in-process loss passes exactly the allow-list an uploaded one does (CLG-1), and
it then runs as the validated graph, interpreted (``execute.run_graph``), never as ``fn``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx
from torch.fx.node import _get_qualified_name

from tinker_std.errors import BadRequestError

from .validate import LossGraph, validate_loss

__all__ = ["encode_loss", "trace_loss"]

_CONSTANTS: dict[type, str] = {
    torch.dtype: "dtype",
    torch.device: "device",
    torch.layout: "layout",
    torch.memory_format: "memory_format",
}


def trace_loss(fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> tuple[LossGraph, torch.fx.GraphModule]:
    """``fn`` traced, encoded and validated: (the graph that runs, the traced module). Every
    problem is a ``BadRequestError``: ``fn`` untraceable or its parameters not ``logprobs``
    first, ``input_ranks`` not one rank per parameter, a node off the allow-list (CLG-1)."""
    name, inputs, graph, module = encode_loss(fn, input_ranks)
    return validate_loss(name, inputs, graph), module


def encode_loss(
    fn: Callable[..., Any], input_ranks: Mapping[str, int]
) -> tuple[str, list[dict[str, Any]], dict[str, Any], torch.fx.GraphModule]:
    """(name, inputs, graph, traced module): ``fn`` as the body of a ``CreateCustomLossRequest``."""
    if not callable(fn):
        raise BadRequestError("fn", f"must be a function, got {type(fn).__name__}")
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError) as exc:
        raise BadRequestError("fn", f"has no inspectable signature: {exc}") from None
    if not params or params[0] != "logprobs":
        raise BadRequestError("fn", f"must take logprobs first, then the loss_fn_inputs it reads; takes {params}")
    if not isinstance(input_ranks, Mapping) or set(input_ranks) != set(params):
        given = sorted(input_ranks) if isinstance(input_ranks, Mapping) else type(input_ranks).__name__
        raise BadRequestError("input_ranks", f"must give the rank of each parameter of {name} {params}, got {given}")
    inputs = [{"name": p, "rank": input_ranks[p]} for p in params]
    try:
        module = torch.fx.symbolic_trace(fn)
    except Exception as exc:
        raise BadRequestError(
            "fn",
            f"{name} cannot be traced by torch.fx ({exc}); a custom loss cannot branch on tensor values "
            "or call libraries other than torch and math",
        ) from None
    nodes = [
        {
            "op": node.op,
            "name": node.name,
            "target": _target(node),
            "args": [_encode(name, a) for a in node.args],
            "kwargs": {k: _encode(name, v) for k, v in node.kwargs.items()},
        }
        for node in module.graph.nodes
    ]
    return name, inputs, {"format": 1, "nodes": nodes}, module


def _target(node: torch.fx.Node) -> str:
    if node.op != "call_function":
        return str(node.target)
    target = _get_qualified_name(node.target)  # type: ignore[arg-type]
    if target.startswith("_operator."):
        return "operator." + target.removeprefix("_operator.")
    return target


def _encode(name: str, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node):
        return {"ref": arg.name}
    if isinstance(arg, float) and not math.isfinite(arg):
        return {"float": str(arg)}
    if arg is None or isinstance(arg, bool | int | float | str):
        return arg
    if isinstance(arg, list):
        return [_encode(name, a) for a in arg]
    if isinstance(arg, tuple):
        return {"tuple": [_encode(name, a) for a in arg]}
    if isinstance(arg, dict) and all(isinstance(k, str) for k in arg):
        return {"dict": {k: _encode(name, v) for k, v in arg.items()}}
    if isinstance(arg, slice):
        return {"slice": [_encode(name, a) for a in (arg.start, arg.stop, arg.step)]}
    if arg is Ellipsis:
        return {"ellipsis": True}
    kind = _CONSTANTS.get(type(arg))
    if kind is not None:
        return {kind: str(arg).removeprefix("torch.")}
    raise BadRequestError("fn", f"{name} passes a {type(arg).__name__} argument, which a custom loss cannot hold")
