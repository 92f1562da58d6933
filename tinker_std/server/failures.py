"""How the server reports an error: the one mapping from an exception to a wire answer.

Two moments, one encoding (``{"error": "<Type>: <message>", "category", ["field"]}``):

- ``error_reply``: a request refused before it had a future of its own (bad body, unknown
  object, another tenant's object): an HTTP 4xx whose status is the error class's;
- ``failure_reply``: a request whose future failed, answered by ``retrieve_future`` with HTTP 200
  (the SDK raises it as ``RequestFailedError``); category ``user`` for tinker-std's typed errors,
  ``server`` for anything else.

``MAPPED`` lists the exception types ``error_reply`` answers; anything else is a server bug and
reaches the ASGI host as a 500.
"""

from __future__ import annotations

from pydantic import ValidationError

from tinker_std.errors import BadRequestError, NotFoundError, RequestFailedError, TinkerError

from .messages import WireReply

__all__ = ["MAPPED", "ServerShutdown", "ServerUnsupported", "error_reply", "failure_reply", "not_found_reply"]


class ServerShutdown(TinkerError):
    """The server stopped before this request finished."""


class ServerUnsupported(TinkerError):
    """A documented part of the Tinker API that the tinker-std server refuses (docs/server.md)."""


#: Exceptions that mean "the request was bad", answered by ``error_reply``.
MAPPED: tuple[type[Exception], ...] = (
    TinkerError,
    ValidationError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    IndexError,
)


def error_reply(exc: Exception) -> WireReply:
    """The HTTP answer to a request refused before it had a future."""
    if isinstance(exc, BadRequestError):
        return WireReply.json({"error": f"BadRequestError: {exc}", "field": exc.field, "category": "user"}, 400)
    if isinstance(exc, NotFoundError):
        return WireReply.json({"error": f"NotFoundError: {exc}", "category": "user"}, 404)
    if isinstance(exc, ValidationError):
        return WireReply.json({"error": f"BadRequestError: malformed request: {exc}", "category": "user"}, 400)
    if isinstance(exc, ServerUnsupported):
        return WireReply.json({"error": f"Unsupported: {exc}", "category": "user"}, 400)
    if isinstance(exc, TinkerError):
        return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"}, 400)
    return WireReply.json(
        {"error": f"BadRequestError: malformed request: {type(exc).__name__}: {exc}", "category": "user"}, 400
    )


def failure_reply(exc: BaseException) -> WireReply:
    """``retrieve_future``'s answer for a request whose future failed with ``exc``."""
    if isinstance(exc, RequestFailedError):
        return WireReply.json({"error": f"RequestFailedError: {exc}", "category": exc.category})
    if isinstance(exc, ServerUnsupported):
        return WireReply.json({"error": f"Unsupported: {exc}", "category": "user"})
    if isinstance(exc, TinkerError):
        return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"})
    if isinstance(exc, ValidationError):
        return WireReply.json({"error": f"BadRequestError: {exc}", "category": "user"})
    return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "server"})


def not_found_reply(what: str) -> WireReply:
    """404 for a path no route declares, or an object the caller cannot see."""
    return WireReply.json({"error": f"NotFoundError: {what}", "category": "user"}, 404)
