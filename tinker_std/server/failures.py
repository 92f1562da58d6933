"""How the server reports an error: the one mapping from an exception to a wire answer.

The SDK reads an error as ``{"error": "<Type>: <message>", "category", ["field"]}`` (a
``BadRequestError`` also names its ``field``). Two moments use it:

- ``error_reply``: a request refused before it had a future of its own (bad body, unknown
  object, another tenant's object): the HTTP status is the error class's ``status_code``
  (``BadRequestError`` 400, ``NotFoundError`` 404, ``ConflictError`` 409, ...). A pydantic
  ``ValidationError`` or a ``KeyError``/``TypeError``/... raised while reading the body is a
  malformed request: ``BadRequestError`` on field ``body``, 400;
- ``failure_reply``: a request whose future failed, answered by ``retrieve_future`` with HTTP 200
  (the SDK raises it as ``RequestFailedError``); an exception that is not a ``TinkerError`` is a
  failure of the server (category ``server``).

The category is a ``RequestFailedError``'s own, else ``user`` for a status below 500 and
``server`` from 500 on. ``MAPPED`` lists the exception types ``error_reply`` answers; anything
else is a server bug and reaches the ASGI host as a 500.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tinker_std.errors import BadRequestError, RequestFailedError, TinkerError, error_payload

from .messages import WireReply

__all__ = [
    "MAPPED",
    "ServerShutdown",
    "ServerUnsupported",
    "error_body",
    "error_reply",
    "failure_reply",
    "not_found_reply",
]


class ServerShutdown(TinkerError):
    """The server stopped before this request finished (another server may answer it)."""

    status_code = 503
    retryable = True


class ServerUnsupported(TinkerError):
    """A documented part of the Tinker API that the tinker-std server refuses (docs/server.md).
    Its wire name is ``Unsupported``."""

    wire_name = "Unsupported"


#: what reading a request body may raise besides tinker-std's errors: a malformed request
MALFORMED: tuple[type[Exception], ...] = (ValidationError, KeyError, TypeError, ValueError, OverflowError, IndexError)
#: every exception ``error_reply`` answers
MAPPED: tuple[type[Exception], ...] = (TinkerError, *MALFORMED)


def error_body(error: TinkerError) -> dict[str, Any]:
    """The wire encoding of ``error``: ``{"error": "<Type>: <message>", "category"[, "field"]}``."""
    payload = error.to_payload()
    name = getattr(error, "wire_name", payload["type"])
    if isinstance(error, RequestFailedError):
        category = error.category
    else:
        category = "user" if error.status_code < 500 else "server"
    body: dict[str, Any] = {"error": f"{name}: {payload['message']}", "category": category}
    if isinstance(error, BadRequestError):
        body["field"] = error.field
    return body


def error_reply(exc: Exception) -> WireReply:
    """The HTTP answer to a request refused before it had a future."""
    error = _as_tinker_error(exc)
    return WireReply.json(error_body(error), error.status_code)


def failure_reply(exc: BaseException) -> WireReply:
    """``retrieve_future``'s answer (HTTP 200) for a request whose future failed with ``exc``."""
    if isinstance(exc, ValidationError):
        return WireReply.json(error_body(_as_tinker_error(exc)))
    error = exc if isinstance(exc, TinkerError) else TinkerError.from_payload(error_payload(exc))
    return WireReply.json(error_body(error))


def not_found_reply(what: str) -> WireReply:
    """404 for a path no route declares, or a request id the caller cannot see."""
    return WireReply.json({"error": f"NotFoundError: {what}", "category": "user"}, 404)


def _as_tinker_error(exc: Exception) -> TinkerError:
    if isinstance(exc, TinkerError):
        return exc
    if isinstance(exc, ValidationError):
        return BadRequestError("body", f"malformed request: {exc}")
    return BadRequestError("body", f"malformed request: {type(exc).__name__}: {exc}")
