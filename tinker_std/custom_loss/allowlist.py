"""The operations a server-side custom loss graph may use (spec CLG-1), as explicit tables.

A node's target is looked up *by name* in these tables and nowhere else: the server never imports a
module or resolves an attribute path from the wire, so a graph naming ``os.system``,
``builtins.eval`` or ``torch.save`` finds no entry and is refused. Each table maps the wire name
the SDK writes (``torch.fx.node._get_qualified_name``, with ``_operator.`` written ``operator.``)
to the object that runs.

What is left out on purpose: anything with side effects (I/O, ``torch.save``/``load``, in-place
methods ending in ``_``, ``backward``), anything that leaves torch (``item``, ``tolist``,
``numpy``), and anything that allocates from a size argument (``torch.zeros``/``ones``/``full``/
``empty``/``arange``/``rand*``, ``repeat``, ``new_*``, ``expand`` to a larger size is a view and
allowed): a graph's memory is bounded by its inputs' sizes and its node count.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_FUNCTIONS",
    "ALLOWED_METHODS",
    "MAX_NODES",
    "PYTHON_FUNCTIONS",
    "constant",
]

#: Most nodes a graph may have (placeholders and output included).
MAX_NODES = 512

_TORCH_FUNCTIONS = (
    # elementwise
    "abs", "neg", "exp", "exp2", "expm1", "log", "log1p", "log2", "sigmoid", "tanh", "sqrt", "rsqrt", "square",
    "pow", "sign", "relu", "clamp", "clip", "clamp_min", "clamp_max", "minimum", "maximum", "where", "reciprocal",
    "add", "sub", "mul", "div", "true_divide", "lerp", "nan_to_num", "isfinite", "isnan", "floor", "ceil", "round",
    "logaddexp", "xlogy", "erf",
    # comparisons and logic
    "gt", "ge", "lt", "le", "eq", "ne", "logical_and", "logical_or", "logical_not", "logical_xor",
    # reductions
    "sum", "mean", "prod", "amax", "amin", "max", "min", "logsumexp", "softmax", "log_softmax", "cumsum",
    "argmax", "argmin", "std", "var", "norm", "count_nonzero",
    # shapes and indexing over existing values
    "stack", "cat", "gather", "take_along_dim", "index_select", "masked_select", "reshape", "flatten", "squeeze",
    "unsqueeze", "transpose", "permute", "flip", "diff", "matmul", "dot",
    # values shaped like an existing tensor
    "zeros_like", "ones_like", "full_like", "tensor", "as_tensor",
)  # fmt: skip

_FUNCTIONAL = (
    "logsigmoid",
    "softplus",
    "relu",
    "log_softmax",
    "softmax",
    "sigmoid",
    "tanh",
    "silu",
    "gelu",
    "mse_loss",
)

_MATH = ("log", "exp", "sqrt", "log1p", "expm1", "tanh", "fabs", "pow", "isfinite", "isnan", "floor", "ceil")

_OPERATORS = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "matmul",
    "gt", "ge", "lt", "le", "eq", "ne", "and_", "or_", "xor", "invert", "not_", "getitem",
)  # fmt: skip


def _functions() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in _TORCH_FUNCTIONS:
        table[f"torch.{name}"] = getattr(torch, name)
    for name in _FUNCTIONAL:
        fn = getattr(F, name)
        table[f"torch.nn.functional.{name}"] = fn
        # F's C builtins are named by their home module (e.g. ``torch._C._nn.log_sigmoid``)
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__name__", None)
        if module and qualname:
            table[f"{module}.{qualname}"] = fn
    table["torch._C._nn.log_sigmoid"] = F.logsigmoid
    table["torch._C._nn.softplus"] = F.softplus
    for name in _MATH:
        table[f"math.{name}"] = getattr(math, name)
    for name in _OPERATORS:
        table[f"operator.{name}"] = getattr(operator, name)
    # ``x.shape`` / ``x.dtype`` trace to a getattr call (wire name ``getattr``); its attribute is
    # checked separately (``ALLOWED_ATTRIBUTES``)
    table["getattr"] = getattr
    return table


#: wire name -> the function a ``call_function`` node runs
ALLOWED_FUNCTIONS: dict[str, Callable[..., Any]] = _functions()

#: The ``math`` and ``operator`` functions: on Python values (no tensor among the arguments) they
#: run only on numbers (``execute`` checks), so ``"a" * 10**12`` or ``10 ** 10**9`` never runs.
PYTHON_FUNCTIONS: frozenset[Any] = frozenset(
    fn for name, fn in ALLOWED_FUNCTIONS.items() if name.startswith(("math.", "operator."))
)

#: ``call_method`` names, called on a ``torch.Tensor`` receiver only
_NOT_METHODS = frozenset({"stack", "cat", "tensor", "as_tensor", "zeros_like", "ones_like", "full_like"})
_METHODS_ONLY = (
    "masked_fill", "detach", "float", "double", "long", "int", "bool", "to", "type_as", "view", "view_as",
    "expand", "expand_as", "contiguous", "clone", "t", "size", "dim", "numel", "unbind", "sort", "topk", "mm",
)  # fmt: skip
ALLOWED_METHODS: frozenset[str] = frozenset({*(n for n in _TORCH_FUNCTIONS if n not in _NOT_METHODS), *_METHODS_ONLY})

#: attributes ``builtins.getattr`` may read (of a tensor only)
ALLOWED_ATTRIBUTES: frozenset[str] = frozenset({"shape", "dtype", "ndim", "T", "mT"})

_CONSTANTS: dict[str, type] = {
    "dtype": torch.dtype,
    "layout": torch.layout,
    "memory_format": torch.memory_format,
}


def constant(kind: str, name: Any) -> Any:
    """The torch constant an encoded ``{"dtype": "float32"}`` (``layout``, ``memory_format``,
    ``device``) names; ``ValueError`` for anything else. Looked up as an attribute of ``torch``
    and kept only if it has the constant's own type."""
    if not isinstance(name, str) or (not name.isidentifier() and kind != "device"):
        raise ValueError(f"{kind} {name!r} is not a name")
    if kind == "device":
        if name != "cpu":
            raise ValueError(f"device {name!r}: a custom loss runs where the server puts it (only 'cpu' may be named)")
        return torch.device("cpu")
    expected = _CONSTANTS.get(kind)
    value = getattr(torch, name, None) if expected is not None else None
    if expected is None or not isinstance(value, expected):
        raise ValueError(f"{kind} {name!r} is not a torch {kind}")
    return value
