"""Backend registry: names -> backend classes (spec BE-8..BE-10).

Every backend, built-in or third-party, is registered one way: an entry point in the
``tinker_std.backends`` group (the built-ins' are in tinker-std's own ``pyproject.toml``). Names
resolve through that group; a ``module:Class`` string or a class/instance is accepted directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from importlib.metadata import entry_points
from typing import Any

from .backend import Backend
from .capabilities import Capabilities
from .errors import BackendValidationError, NotFoundError

__all__ = [
    "BUILTIN_PACKAGE",
    "ENTRY_POINT_GROUP",
    "builtin_backends",
    "available_backends",
    "load_backend_class",
    "create_backend",
    "default_backend_name",
    "validate_backend_class",
]

ENTRY_POINT_GROUP = "tinker_std.backends"
#: Where the built-in backends live: their entry points (``pyproject.toml``) point into this package.
BUILTIN_PACKAGE = "tinker_std.backends."


def builtin_backends() -> dict[str, str]:
    """The built-in backends' names -> ``module:Class``, from their entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith(BUILTIN_PACKAGE)}


def default_backend_name() -> str:
    """``$TINKER_STD_BACKEND``; else ``torch`` when transformers and peft are installed; else ``mock`` (BE-8)."""
    env = os.environ.get("TINKER_STD_BACKEND")
    if env:
        return env
    if all(importlib.util.find_spec(name) is not None for name in ("transformers", "peft")):
        return "torch"
    return "mock"


def available_backends() -> dict[str, str]:
    """Every known backend name -> ``module:Class``: the built-ins first, then the others' entry points."""
    found = builtin_backends()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise NotFoundError(f"backend {target!r} is not 'module:Class'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise NotFoundError(f"module {module_name!r} has no attribute {attr!r}") from exc


def validate_backend_class(cls: Any) -> type[Backend]:
    """Check that ``cls`` satisfies the contract; ``BackendValidationError`` otherwise."""
    if not (inspect.isclass(cls) and issubclass(cls, Backend)):
        raise BackendValidationError(f"{cls!r} is not a subclass of tinker_std.backend.Backend")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise BackendValidationError(f"backend {cls.__name__} does not implement {missing}")
    if not isinstance(getattr(cls, "name", None), str):
        raise BackendValidationError(f"backend {cls.__name__} needs a class attribute `name: str`")
    if not isinstance(getattr(cls, "capabilities", None), Capabilities):
        raise BackendValidationError(f"backend {cls.__name__} needs a class attribute `capabilities: Capabilities`")
    return cls


def load_backend_class(name: str) -> type[Backend]:
    """Resolve a backend name or ``module:Class`` string to its validated class."""
    known = available_backends()
    if name in known:
        return validate_backend_class(_import_target(known[name]))
    if ":" in name:
        return validate_backend_class(_import_target(name))
    raise NotFoundError(f"unknown backend {name!r}; known backends: {', '.join(sorted(known))}")


def create_backend(backend: str | Backend | type[Backend] | None, options: dict[str, Any]) -> Backend:
    """An unstarted backend instance from a name, class or instance."""
    if isinstance(backend, Backend):
        if options:
            raise TypeError("backend options cannot be given together with a backend instance")
        validate_backend_class(type(backend))
        return backend
    cls = (
        validate_backend_class(backend)
        if inspect.isclass(backend)
        else load_backend_class(backend or default_backend_name())
    )
    return cls(**options)
