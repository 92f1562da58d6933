"""What a ``TinkerBackend`` declares (spec CAP-3): the server's optional capabilities and tolerance
class, which the protocol cannot tell, so they come from the user or from the served backend.

In order of precedence:

1. the constructor options ``capabilities`` (a list of names, or one comma-separated string;
   ``[]`` or ``"none"`` for none) and ``tolerance`` (``mock``, ``fp32`` or ``bf16``);
2. the environment: ``TINKER_STD_TINKER_CAPABILITIES`` and ``TINKER_STD_TINKER_TOLERANCE``, same
   syntax (so ``tinker-std conformance --backend tinker`` needs no code);
3. for ``serve=NAME`` (a tinker-std server in this process): what NAME declares that the protocol
   carries (everything but ``introspection``), in NAME's tolerance class (the served backend's
   class attribute: read, not guessed);
4. otherwise, for an unknown server: no optional capability and class ``bf16``; nothing is assumed.

A name outside ``PROTOCOL_CAPABILITIES`` is refused with ``BadRequestError("capabilities")``
(``introspection`` cannot be carried: the SDK has no call that reads weights or gradients).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast, get_args

from tinker_std.capabilities import OPTIONAL_CAPABILITIES, Capabilities, ToleranceClass
from tinker_std.errors import BadRequestError

__all__ = ["PROTOCOL_CAPABILITIES", "ENV_CAPABILITIES", "ENV_TOLERANCE", "declared_capabilities", "subclass_declaring"]

#: What this backend carries over the protocol: every optional capability except ``introspection``
#: (no SDK call reads weights) and ``loss:stable_reinforce``: its provenance is checked against the
#: samples the *server* recorded (SDK-3, LOSS-18), under the server's sequence ids, while this
#: backend's client layer records its own; so it is refused (CAP-4, ``Unsupported`` naming it)
#: rather than sent with spans the server cannot match.
PROTOCOL_CAPABILITIES: frozenset[str] = OPTIONAL_CAPABILITIES - {"introspection", "loss:stable_reinforce"}
ENV_CAPABILITIES = "TINKER_STD_TINKER_CAPABILITIES"
ENV_TOLERANCE = "TINKER_STD_TINKER_TOLERANCE"
UNKNOWN_SERVER = Capabilities(optional=frozenset(), tolerance="bf16")


def _names(value: object, source: str) -> frozenset[str]:
    if isinstance(value, str):
        items = [] if value.strip().lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, Sequence | frozenset | set):
        items = [str(v) for v in value]
    else:
        raise BadRequestError("capabilities", f"{source}: a list of names or a comma-separated string, got {value!r}")
    unknown = sorted(set(items) - PROTOCOL_CAPABILITIES)
    if unknown:
        raise BadRequestError(
            "capabilities",
            f"{source}: {unknown} cannot be declared for a Tinker server; choose from {sorted(PROTOCOL_CAPABILITIES)}",
        )
    return frozenset(items)


def _tolerance(value: object, source: str) -> ToleranceClass:
    if value not in get_args(ToleranceClass):
        raise BadRequestError("tolerance", f"{source}: one of {list(get_args(ToleranceClass))}, got {value!r}")
    return cast(ToleranceClass, value)


def _served(serve: str) -> Capabilities | None:
    from tinker_std.registry import available_backends, load_backend_class

    if serve not in available_backends() and ":" not in serve:
        return None  # LocalServer refuses it with a BadRequestError naming serve
    try:
        cls = load_backend_class(serve)
    except Exception:
        return None  # the same
    if not hasattr(cls, "capabilities"):
        return None
    declared: Capabilities = cls.capabilities
    return Capabilities(optional=declared.optional & PROTOCOL_CAPABILITIES, tolerance=declared.tolerance)


def declared_capabilities(options: Mapping[str, Any], default: Capabilities, serve: str | None) -> Capabilities:
    """The declaration for constructor ``options`` (module docstring): ``default`` (the class's own
    declaration) with what ``serve`` (a backend served in-process, ``None``: not known) declares
    over it, and the user's ``capabilities`` / ``tolerance`` over both."""
    names: object = options.get("capabilities")
    tolerance: object = options.get("tolerance")
    source_names = source_tolerance = "option"
    if names is None and os.environ.get(ENV_CAPABILITIES) is not None:
        names, source_names = os.environ[ENV_CAPABILITIES], ENV_CAPABILITIES
    if tolerance is None and os.environ.get(ENV_TOLERANCE):
        tolerance, source_tolerance = os.environ[ENV_TOLERANCE], ENV_TOLERANCE
    base = (_served(serve) if serve is not None else None) or default
    return Capabilities(
        optional=base.optional if names is None else _names(names, source_names),
        tolerance=base.tolerance if tolerance is None else _tolerance(tolerance, source_tolerance),
    )


@functools.cache
def subclass_declaring(cls: type[Any], capabilities: Capabilities) -> type[Any]:
    """A subclass of ``cls`` whose class attribute ``capabilities`` is ``capabilities`` (the client
    layer reads the declaration from the backend's type), same name and module."""
    return type(cls.__name__, (cls,), {"capabilities": capabilities, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})  # fmt: skip
