"""Running a validated custom loss (spec CLG-2, CLG-3).

``run_graph`` interprets a ``LossGraph`` step by step on one datum's tensors: no code is generated
or compiled, each step calls the allow-listed object ``validate`` put in it, and a method step
calls a method of a ``torch.Tensor`` only. ``graph_loss_fn`` turns the graph into the library's
``CustomLossFn``, the loss of ``TrainingClient.forward_backward_custom``: the sum of the per-datum
losses, metrics reduced by their suffix (``:sum`` summed, ``:mean`` averaged over the datums), the
same definition as the SDK's client-side ``run_loss_handle``, so both give the same gradient.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch

from tinker_std.errors import BadRequestError
from tinker_std.training_math import datum_losses
from tinker_std.types import Datum

from .allowlist import PYTHON_FUNCTIONS
from .validate import LossGraph, Ref, Step

__all__ = ["GraphLoss", "check_graph_inputs", "graph_loss_fn", "run_graph"]

#: A step's tensor result may hold at most this many times the elements of the datum's inputs
#: (and at least ``_MIN_ELEMENTS``): broadcasting cannot grow memory without bound.
_GROWTH = 64
_MIN_ELEMENTS = 1 << 20
#: Python numbers a ``math``/``operator`` step may take (and the largest integer exponent)
_MAX_PY_INT = 1 << 62
_MAX_PY_EXPONENT = 64


def run_graph(graph: LossGraph, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``graph`` on one datum: ``tensors`` are logprobs and the inputs in ``graph.inputs`` order.
    Returns (scalar loss, metric key -> scalar tensor); ``ValueError`` if a step misbehaves."""
    env: dict[str, Any] = dict(zip(graph.placeholders, tensors, strict=True))
    bound = max(_MIN_ELEMENTS, _GROWTH * sum(t.numel() for t in tensors))
    for step in graph.steps:
        args = [_resolve(env, a) for a in step.args]
        kwargs = {k: _resolve(env, v) for k, v in step.kwargs.items()}
        if "out" in kwargs:
            raise ValueError(f"node {step.name!r}: out= is not allowed (a custom loss writes no tensor in place)")
        _check_before(step, args, kwargs, bound)
        if step.kind == "method":
            receiver = args[0]
            if not isinstance(receiver, torch.Tensor):
                raise ValueError(f"node {step.name!r}: .{step.method}() is called on a {type(receiver).__name__}")
            value = getattr(receiver, step.method)(*args[1:], **kwargs)
        else:
            if step.target is getattr and not isinstance(args[0], torch.Tensor):
                raise ValueError(f"node {step.name!r}: getattr of a {type(args[0]).__name__}")
            value = step.target(*args, **kwargs)
        if isinstance(value, torch.Tensor) and value.numel() > bound:
            raise ValueError(f"node {step.name!r} made {value.numel()} values; this datum allows at most {bound}")
        env[step.name] = value
    loss = env[graph.loss.name]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss {graph.name!r} must return a scalar tensor, got {shape}")
    metrics = {}
    for key, ref in graph.metrics.items():
        value = env[ref.name]
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"metric {key!r} must be a scalar tensor")
        metrics[key] = value
    return loss, metrics


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _check_before(step: Step, args: list[Any], kwargs: dict[str, Any], bound: int) -> None:
    """Refuse a step before it runs if it would compute on Python values other than bounded numbers
    (a ``math``/``operator`` step without a tensor), or if its result, computed on the ``meta``
    device (shapes only, no memory), would hold more than ``bound`` values."""
    name, target = step.name, step.target
    leaves = _leaves(args) + _leaves(kwargs)
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if not tensors:
        if target in PYTHON_FUNCTIONS:
            for leaf in leaves:
                if not isinstance(leaf, int | float | bool) or (isinstance(leaf, int) and abs(leaf) > _MAX_PY_INT):
                    raise ValueError(f"node {name!r}: math/operator steps on Python values take numbers only")
            if target in (pow, math.pow, operator.pow) and len(args) == 2 and isinstance(args[1], int):
                if abs(args[1]) > _MAX_PY_EXPONENT:
                    raise ValueError(f"node {name!r}: an integer exponent above {_MAX_PY_EXPONENT}")
        return
    meta_args = [_to_meta(a) for a in args]
    meta_kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
    try:
        if step.kind == "method":
            if not isinstance(meta_args[0], torch.Tensor):
                return  # refused when it runs
            out = getattr(meta_args[0], step.method)(*meta_args[1:], **meta_kwargs)
        else:
            out = target(*meta_args, **meta_kwargs)
    except Exception:
        return  # data-dependent shapes (masked_select, ...): the check after the step applies
    if isinstance(out, torch.Tensor) and out.numel() > bound:
        raise ValueError(f"node {name!r} would make {out.numel()} values; this datum allows at most {bound}")


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, list):
        return [_to_meta(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_meta(v) for v in value)
    return value


def _resolve(env: Mapping[str, Any], arg: Any) -> Any:
    if isinstance(arg, Ref):
        return env[arg.name]
    if isinstance(arg, list):
        return [_resolve(env, a) for a in arg]
    if isinstance(arg, tuple):
        return tuple(_resolve(env, a) for a in arg)
    if isinstance(arg, dict):
        return {k: _resolve(env, v) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(_resolve(env, arg.start), _resolve(env, arg.stop), _resolve(env, arg.step))
    return arg


def check_graph_inputs(graph: LossGraph, data: list[Datum]) -> None:
    """``BadRequestError`` naming ``data[i].loss_fn_inputs.<key>`` unless every datum has each
    input the loss reads, at its declared rank (``logprobs`` has the rank of ``target_tokens``).
    Called before the request takes any step (CLG-3)."""
    for i, datum in enumerate(data):
        pairs = [(graph.inputs[0], "target_tokens"), *((x, x.name) for x in graph.inputs[1:])]
        for loss_input, key in pairs:
            tensor = datum.loss_fn_inputs.get(key)
            field = f"data[{i}].loss_fn_inputs.{key}"
            if tensor is None:
                raise BadRequestError(field, f"is missing; loss {graph.name!r} reads it")
            shape = tensor.shape
            rank = 1 if shape is None else len(shape)
            if rank != loss_input.rank and not (loss_input.rank == 0 and rank == 1 and len(tensor.data) == 1):
                raise BadRequestError(field, f"has rank {rank}; loss {graph.name!r} declared rank {loss_input.rank}")


def _input_tensor(datum: Datum, key: str, rank: int) -> torch.Tensor:
    tensor = datum.loss_fn_inputs[key].to_torch()
    return tensor.reshape(()) if rank == 0 else tensor


class GraphLoss:
    """``graph`` as a per-datum loss (``tinker_std.training_math.DatumLoss``, CLG-4): what a
    backend with the one-pass seam runs inside its own ``forward_backward`` pass. Pickles as its
    validated graph (every step's target is an allow-listed function, pickled by reference)."""

    def __init__(self, graph: LossGraph) -> None:
        self.graph = graph
        self.name = graph.name

    def __call__(self, datum: Datum, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the inputs go where the engine computed the logprobs (an accelerator, for instance)
        inputs = (_input_tensor(datum, x.name, x.rank).to(logprobs.device) for x in self.graph.inputs[1:])
        return run_graph(self.graph, [logprobs, *inputs])


def graph_loss_fn(graph: LossGraph) -> Any:
    """``graph`` as a ``CustomLossFn`` for ``TrainingClient.forward_backward_custom``: the sum of
    the per-datum losses; metrics summed (``:sum``) or averaged over the datums (``:mean``)."""

    def loss_fn(data: list[Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        assert data, "forward_backward_custom refuses an empty batch"
        values, reduced = datum_losses(GraphLoss(graph), data, logprobs)
        return sum(values[1:], values[0]), reduced

    loss_fn.__name__ = graph.name
    return loss_fn
