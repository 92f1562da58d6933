"""What travels between the FSDP backend's parent and its rank processes, besides plain pickles.

Exceptions are sent as ``ErrorRecord`` rather than pickled, because exception classes whose
constructors take several arguments (``BadRequestError``) cannot be unpickled. A tinker-std error
travels as its ``to_payload()`` and is rebuilt by ``TinkerError.from_payload`` (the encoding the
Modal backend and the server use too); any other exception (a ``RuntimeError`` of torch, say) as
its class path, message and plain attributes. ``rebuild`` gives back an instance of the same class
with the same attributes and message.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field
from typing import Any

from tinker_std.errors import TinkerError

__all__ = ["ErrorRecord", "pack", "rebuild"]


@dataclass(frozen=True)
class ErrorRecord:
    """An exception raised on one rank, ready to cross a process boundary."""

    module: str
    qualname: str
    message: str
    attributes: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""
    rank: int | None = None
    payload: dict[str, Any] | None = None  # a TinkerError's to_payload()


def pack(exc: BaseException, rank: int | None = None) -> ErrorRecord:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TinkerError):
        return ErrorRecord(type(exc).__module__, type(exc).__qualname__, str(exc), {}, text, rank, exc.to_payload())
    attributes = {k: v for k, v in vars(exc).items() if _plain(v)}
    return ErrorRecord(type(exc).__module__, type(exc).__qualname__, str(exc), attributes, text, rank)


def rebuild(record: ErrorRecord) -> BaseException:
    """An exception of the recorded class (``RuntimeError`` when that class cannot be imported or
    is not an exception), with the recorded message and attributes."""
    if record.payload is not None:
        return TinkerError.from_payload(record.payload)
    cls: Any = None
    try:
        cls = getattr(importlib.import_module(record.module), record.qualname)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return RuntimeError(f"{record.module}.{record.qualname}: {record.message}")
    exc: BaseException = cls.__new__(cls)
    BaseException.__init__(exc, record.message)
    for key, value in record.attributes.items():
        try:
            setattr(exc, key, value)
        except AttributeError:
            pass
    return exc


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None))) or (
        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )
