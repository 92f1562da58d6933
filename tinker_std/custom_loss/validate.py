"""Validating an uploaded custom loss (the SDK's ``CreateCustomLossRequest``) before it is stored
(spec CLG-1).

``validate_loss(name, inputs, graph)`` checks the request's plain JSON and returns a ``LossGraph``
whose every step holds an object from ``allowlist`` (never one resolved from a wire string) and
whose arguments are decoded values and references to earlier steps. Anything else is a
``BadRequestError`` naming the field and, for a node, the node (``graph.nodes[3] ('system')``).
Nothing from the request runs here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from tinker_std.errors import BadRequestError

from .allowlist import ALLOWED_ATTRIBUTES, ALLOWED_FUNCTIONS, ALLOWED_METHODS, MAX_NODES, constant

__all__ = ["LossGraph", "LossInput", "Ref", "Step", "validate_loss"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_INPUT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_METRIC_KEY = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_MAX_INPUTS = 16
_MAX_ARG_DEPTH = 8
_MAX_CONTAINER = 64
_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


@dataclass(frozen=True)
class Ref:
    """An argument that is the value of an earlier node."""

    name: str


@dataclass(frozen=True)
class LossInput:
    """A graph input: ``logprobs`` or a ``loss_fn_inputs`` key, with its declared rank (0, 1, 2)."""

    name: str
    rank: int


@dataclass(frozen=True)
class Step:
    """One validated computation: ``kind`` is ``function`` (``target`` from ``ALLOWED_FUNCTIONS``)
    or ``method`` (``method`` a name from ``ALLOWED_METHODS``, called on ``args[0]``)."""

    name: str
    kind: str
    target: Any
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class LossGraph:
    """A validated loss: its inputs in call order (``logprobs`` first), its steps in execution
    order, and what it returns: a reference to the loss and metric key -> reference."""

    name: str
    inputs: tuple[LossInput, ...]
    #: the node names the inputs are bound to, in the same order
    placeholders: tuple[str, ...]
    steps: tuple[Step, ...]
    loss: Ref
    metrics: dict[str, Ref] = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in call order."""
        return tuple(i.name for i in self.inputs[1:])


def validate_loss(name: Any, inputs: Any, graph: Any) -> LossGraph:
    """The loss of a ``CreateCustomLossRequest``'s ``name``, ``inputs`` and ``graph`` (plain JSON),
    or ``BadRequestError`` naming what is wrong (CLG-1)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequestError("name", f"must be a Python identifier of at most 128 characters, got {name!r}")
    declared = _inputs(inputs)
    if not isinstance(graph, dict):
        raise BadRequestError("graph", "must be an object with format and nodes")
    if graph.get("format", 1) != 1:
        raise BadRequestError("graph.format", f"only format 1 is known, got {graph.get('format')!r}")
    unknown = sorted(set(graph) - {"format", "nodes"})
    if unknown:
        raise BadRequestError(f"graph.{unknown[0]}", "is not a field of CustomLossGraph")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise BadRequestError("graph.nodes", "must be a non-empty list")
    if len(nodes) > MAX_NODES:
        raise BadRequestError("graph.nodes", f"has {len(nodes)} nodes; a custom loss has at most {MAX_NODES}")
    return _Checker(name, declared).run(nodes)


def _inputs(inputs: Any) -> tuple[LossInput, ...]:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("inputs", "must be a non-empty list, logprobs first")
    if len(inputs) > _MAX_INPUTS:
        raise BadRequestError("inputs", f"has {len(inputs)} entries; a custom loss takes at most {_MAX_INPUTS}")
    out: list[LossInput] = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or set(item) - {"name", "rank"}:
            raise BadRequestError(f"inputs[{i}]", "must be an object with name and rank")
        input_name, rank = item.get("name"), item.get("rank")
        if not isinstance(input_name, str) or not _INPUT_NAME.fullmatch(input_name):
            raise BadRequestError(f"inputs[{i}].name", f"must be a lowercase identifier, got {input_name!r}")
        if isinstance(rank, bool) or rank not in (0, 1, 2):
            raise BadRequestError(f"inputs[{i}].rank", f"must be 0, 1 or 2, got {rank!r}")
        out.append(LossInput(input_name, rank))
    if out[0].name != "logprobs" or out[0].rank == 0:
        raise BadRequestError("inputs[0]", "must be logprobs, of rank 1 ([T]) or 2 ([T, K])")
    names = [i.name for i in out]
    if len(set(names)) != len(names) or "logprobs" in names[1:]:
        raise BadRequestError("inputs", f"names must be distinct, got {names}")
    if "target_tokens" in names[1:]:
        raise BadRequestError("inputs", "target_tokens is not a loss input; logprobs has its shape")
    return tuple(out)


class _Checker:
    """One pass over the nodes in order: each may refer only to nodes before it."""

    def __init__(self, loss_name: str, declared: tuple[LossInput, ...]) -> None:
        self.loss_name = loss_name
        self.declared = declared
        self.defined: set[str] = set()
        self.placeholders: list[str] = []
        self.placeholder_nodes: list[str] = []
        self.steps: list[Step] = []
        self.output: tuple[Ref, dict[str, Ref]] | None = None

    def run(self, nodes: list[Any]) -> LossGraph:
        for i, node in enumerate(nodes):
            self._node(i, node)
        if self.placeholders != [d.name for d in self.declared]:
            raise BadRequestError(
                "graph.nodes",
                f"placeholders {self.placeholders} must be the declared inputs {[d.name for d in self.declared]}, "
                "in order",
            )
        if self.output is None:
            raise BadRequestError("graph.nodes", "has no output node")
        loss, metrics = self.output
        return LossGraph(self.loss_name, self.declared, tuple(self.placeholder_nodes), tuple(self.steps), loss, metrics)

    def _node(self, i: int, node: Any) -> None:
        if not isinstance(node, dict):
            raise BadRequestError(f"graph.nodes[{i}]", "must be an object")
        node_name, op, target = node.get("name"), node.get("op"), node.get("target")
        where = f"graph.nodes[{i}] ({node_name!r})"
        unknown = sorted(set(node) - {"op", "name", "target", "args", "kwargs"})
        if unknown:
            raise BadRequestError(where, f"has unknown field {unknown[0]!r}")
        if not isinstance(node_name, str) or not _NAME.fullmatch(node_name) or node_name in self.defined:
            raise BadRequestError(where, "name must be a new identifier")
        if not isinstance(target, str):
            raise BadRequestError(where, "target must be a string")
        if self.output is not None:
            raise BadRequestError(where, "comes after the output node")
        raw_args, raw_kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(raw_args, list) or not isinstance(raw_kwargs, dict):
            raise BadRequestError(where, "args must be a list and kwargs an object")
        args = tuple(self._arg(where, a, 0) for a in raw_args)
        kwargs = {str(k): self._arg(where, v, 0) for k, v in raw_kwargs.items()}
        if op == "placeholder":
            if args or kwargs or target not in [d.name for d in self.declared]:
                raise BadRequestError(where, "a placeholder takes no arguments and names a declared input")
            self.placeholders.append(target)
            self.placeholder_nodes.append(node_name)
        elif op == "call_function":
            fn = ALLOWED_FUNCTIONS.get(target)
            if fn is None:
                raise BadRequestError(
                    where, f"calls {target!r}, which is not on the allow-list of torch/math/operator functions"
                )
            if target == "getattr":
                self._check_getattr(where, args, kwargs)
            self.steps.append(Step(node_name, "function", fn, "", args, kwargs))
        elif op == "call_method":
            if target not in ALLOWED_METHODS:
                raise BadRequestError(where, f"calls method {target!r}, which is not on the allow-list")
            if not args or not isinstance(args[0], Ref):
                raise BadRequestError(where, "a method call needs a node as its receiver")
            self.steps.append(Step(node_name, "method", None, target, args, kwargs))
        elif op == "output":
            self.output = self._output(where, args)
        elif op in ("get_attr", "call_module"):
            raise BadRequestError(where, f"{op} nodes are refused: a custom loss reads only its inputs")
        else:
            raise BadRequestError(where, f"unknown op {op!r}")
        self.defined.add(node_name)

    def _check_getattr(self, where: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if kwargs or len(args) != 2 or not isinstance(args[0], Ref) or args[1] not in ALLOWED_ATTRIBUTES:
            allowed = ", ".join(sorted(ALLOWED_ATTRIBUTES))
            raise BadRequestError(where, f"getattr may read only {allowed} of a node, got {args[1:]!r}")

    def _output(self, where: str, args: tuple[Any, ...]) -> tuple[Ref, dict[str, Ref]]:
        result = args[0] if len(args) == 1 else None
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise BadRequestError(where, "the output must be (loss, metrics)")
        loss, metrics = result
        if not isinstance(loss, Ref):
            raise BadRequestError(where, "the loss must be a computed tensor")
        if not isinstance(metrics, dict):
            raise BadRequestError(where, "the metrics must be a dict")
        for key, value in metrics.items():
            if not _METRIC_KEY.fullmatch(key):
                raise BadRequestError(where, f"metric {key!r} must be named custom/<name>:sum or custom/<name>:mean")
            if not isinstance(value, Ref):
                raise BadRequestError(where, f"metric {key!r} must be a computed tensor")
        return loss, dict(metrics)

    def _arg(self, where: str, arg: Any, depth: int) -> Any:
        """The decoded value of an encoded argument (the SDK's ``CustomLossNode.args`` format)."""
        if depth > _MAX_ARG_DEPTH:
            raise BadRequestError(where, "arguments nest too deeply")
        if arg is None or isinstance(arg, bool | int | float | str):
            if isinstance(arg, str) and len(arg) > 256:
                raise BadRequestError(where, "a string argument is longer than 256 characters")
            return arg
        if isinstance(arg, list):
            return [self._arg(where, a, depth + 1) for a in self._bounded(where, arg)]
        if not (isinstance(arg, dict) and len(arg) == 1):
            raise BadRequestError(where, f"unknown argument encoding {arg!r}")
        ((kind, value),) = arg.items()
        if kind == "ref":
            if value not in self.defined:
                raise BadRequestError(where, f"refers to {value!r}, which is not an earlier node")
            return Ref(value)
        if kind == "tuple" and isinstance(value, list):
            return tuple(self._arg(where, a, depth + 1) for a in self._bounded(where, value))
        if kind == "dict" and isinstance(value, dict):
            return {str(k): self._arg(where, a, depth + 1) for k, a in self._bounded(where, value).items()}
        if kind == "slice" and isinstance(value, list) and len(value) == 3:
            return slice(*(self._arg(where, a, depth + 1) for a in value))
        if kind == "ellipsis" and value is True:
            return Ellipsis
        if kind == "float" and value in _FLOATS:
            return _FLOATS[value]
        if kind in ("dtype", "device", "layout", "memory_format"):
            try:
                return constant(kind, value)
            except ValueError as exc:
                raise BadRequestError(where, str(exc)) from None
        raise BadRequestError(where, f"unknown argument encoding {arg!r}")

    @staticmethod
    def _bounded(where: str, container: Any) -> Any:
        if len(container) > _MAX_CONTAINER:
            raise BadRequestError(where, f"an argument holds more than {_MAX_CONTAINER} items")
        return container
