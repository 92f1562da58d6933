"""Errors only the ``tinker`` backend raises, and the mapping of the SDK's errors to tinker-std's.

The tinker-std server reports a failed request as ``"<ErrorType>: <message>"`` (plus ``field`` for a
``BadRequestError`` answered at once); the SDK raises that as ``RequestFailedError`` (a failed
future) or ``APIStatusError`` (an HTTP 4xx). ``to_std_error`` turns it back into the error an
in-process backend raises for the same request: same class, same ``field`` / ``capability``.
Another server words its errors its own way: an HTTP error whose message does not name a
tinker-std error type is mapped by its status code (404 ``NotFoundError``, 409 ``ConflictError``,
400/422 ``BadRequestError``), so the suite judges the semantics, not our wording.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from tinker_std.errors import (
    BadRequestError,
    ConflictError,
    ContextLengthError,
    CorruptCheckpointError,
    LimitExceededError,
    NonFiniteError,
    NotFoundError,
    RequestFailedError,
    StorageFullError,
    TinkerError,
    Unsupported,
)

__all__ = [
    "TinkerSdkMissingError",
    "TinkerCredentialsError",
    "TinkerServerUnreachableError",
    "TinkerAuthenticationError",
    "require_sdk",
    "to_std_error",
]


class TinkerSdkMissingError(TinkerError):
    """The official ``tinker`` SDK is not installed."""

    def __init__(self) -> None:
        super().__init__("the tinker backend needs the official `tinker` SDK: pip install 'tinker-std[server]'")


class TinkerCredentialsError(TinkerError):
    """No usable API key (raised when the backend is constructed, before any request)."""


class TinkerServerUnreachableError(TinkerError):
    """Nothing answers at ``base_url`` (raised by the first call, after one short connection attempt)."""

    def __init__(self, base_url: str, detail: str) -> None:
        self.base_url = base_url
        super().__init__(
            f"no Tinker server answers at {base_url} ({detail}). Start one (`tinker-std serve --backend torch "
            "--api-key tml-...`), set base_url / TINKER_BASE_URL, or pass serve='mock' to serve one in this process."
        )


class TinkerAuthenticationError(TinkerError):
    """The server refused the API key (HTTP 401/403)."""


def require_sdk() -> None:
    """``TinkerSdkMissingError`` unless ``tinker`` can be imported."""
    if importlib.util.find_spec("tinker") is None:
        raise TinkerSdkMissingError()


_FAILED = re.compile(r"^Request failed: (?P<inner>.*) for self\.request_id=.*$", re.DOTALL)
_TYPED = re.compile(r"^(?P<kind>[A-Za-z_]\w*): (?P<rest>.*)$", re.DOTALL)
#: The error types a tinker-std server names at the start of its messages.
_KINDS = frozenset(
    {"BadRequestError", "ContextLengthError", "NotFoundError", "ConflictError", "Unsupported", "RequestFailedError"}
    | {"NonFiniteError", "LimitExceededError", "CorruptCheckpointError", "StorageFullError"}
)
#: ``BadRequestError`` and its subclasses, whose messages are ``"<field>: <problem>"``.
_BAD_REQUEST: dict[str, type[BadRequestError]] = {
    "BadRequestError": BadRequestError,
    "ContextLengthError": ContextLengthError,
    "NonFiniteError": NonFiniteError,
    "LimitExceededError": LimitExceededError,
}
_CORRUPT = re.compile(r"^checkpoint (?P<path>\S+) is corrupt: (?P<problem>.*)$", re.DOTALL)
_FULL = re.compile(r"^no space left to save (?P<path>\S+?); ")
_UNSUPPORTED = re.compile(r"^backend '(?P<backend>.*)' does not declare the optional capability '(?P<cap>[^']*)'$")


def _typed(message: str, field: str | None, category: str, request_id: str) -> TinkerError:
    """The tinker-std error a server message ``"<Type>: <text>"`` names."""
    match = _TYPED.match(message)
    kind, rest = (match["kind"], match["rest"]) if match else ("", message)
    if kind in _BAD_REQUEST:
        cls = _BAD_REQUEST[kind]
        if field is not None and rest.startswith(f"{field}: "):
            return cls(field, rest[len(field) + 2 :])
        where, sep, problem = rest.partition(": ")
        return cls(where, problem) if sep else cls(field or "request", rest)
    if kind == "NotFoundError":
        return NotFoundError(rest)
    if kind == "ConflictError":
        return ConflictError(rest)
    if kind == "Unsupported":
        found = _UNSUPPORTED.match(rest)
        if found:
            return Unsupported(found["cap"], found["backend"])
    if kind == "CorruptCheckpointError" and (corrupt := _CORRUPT.match(rest)):
        return CorruptCheckpointError(corrupt["path"], corrupt["problem"])
    if kind == "StorageFullError" and (full := _FULL.match(rest)):
        return StorageFullError(full["path"])
    if kind == "RequestFailedError":
        return RequestFailedError(rest, request_id=request_id, category=category)
    return RequestFailedError(message, request_id=request_id, category=category)


def to_std_error(exc: BaseException) -> TinkerError | None:
    """tinker-std's error for an exception the SDK raised; ``None`` when it is not the SDK's."""
    if isinstance(exc, TinkerError):
        return exc
    import tinker

    if isinstance(exc, tinker.RequestFailedError):
        match = _FAILED.match(exc.message)
        category = getattr(exc.category, "value", str(exc.category))
        return _typed(match["inner"] if match else exc.message, None, category, exc.request_id)
    if isinstance(exc, tinker.APIConnectionError):
        return TinkerServerUnreachableError(str(exc.request.url.copy_with(path="/")), str(exc))
    if isinstance(exc, tinker.APIStatusError):
        body: Any = exc.body
        message = (body.get("error") or body.get("detail")) if isinstance(body, dict) else None
        raw_field = body.get("field") if isinstance(body, dict) else None
        field = raw_field if isinstance(raw_field, str) else None
        if exc.status_code in (401, 403):
            return TinkerAuthenticationError(f"the server refused the API key (HTTP {exc.status_code}): {message}")
        named = _TYPED.match(message) if isinstance(message, str) else None
        if isinstance(message, str) and named is not None and named["kind"] in _KINDS:
            return _typed(message, field, "user", "")
        # Another server's wording: the status code carries the semantics (ERR-2, ERR-3), not the text.
        text = message if isinstance(message, str) else str(exc)
        if exc.status_code == 404:
            return NotFoundError(text)
        if exc.status_code == 409:
            return ConflictError(text)
        if exc.status_code in (400, 422):
            return BadRequestError(field or "request", text)
        return RequestFailedError(text, category="server")
    if isinstance(exc, tinker.TinkerError):
        return RequestFailedError(f"{type(exc).__name__}: {exc}", category="unknown")
    return None
