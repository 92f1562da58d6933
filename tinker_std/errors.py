"""Typed errors of tinker-std.

Names follow the official ``tinker`` SDK so that ported ``except`` clauses keep working:
``BadRequestError``, ``NotFoundError``, ``ConflictError``, ``RequestFailedError`` and their
common base ``TinkerError``. ``Unsupported`` is tinker-std's own: a backend was asked for an
optional capability it does not declare.

Every error carries its HTTP ``status_code`` (spec ERR-1: 400, 404, 409 for the classes named
there; 400 for any other typed error, 500 for a failure of the server side) and whether the same
request may succeed later (``retryable``). It crosses a process or network boundary as plain data
(``None``, bools, numbers, strings, lists, str-keyed dicts) with ``to_payload()`` and is rebuilt,
same class and attributes, with ``TinkerError.from_payload()``; ``error_payload`` encodes any
exception (one that is not a ``TinkerError`` as a server-side ``RequestFailedError``).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "error_payload",
    "TinkerError",
    "BadRequestError",
    "ContextLengthError",
    "NotFoundError",
    "ConflictError",
    "RequestFailedError",
    "Unsupported",
    "BackendValidationError",
    "IncompatibleEnvironmentError",
    "NonFiniteError",
    "CorruptCheckpointError",
    "StorageFullError",
    "LimitExceededError",
]


def _key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


class TinkerError(Exception):
    """Base class of every error raised by tinker-std."""

    status_code: ClassVar[int] = 400
    retryable: ClassVar[bool] = False
    #: ``"module:qualname"`` -> class, for every subclass defined so far (``from_payload``)
    _classes: ClassVar[dict[str, type[TinkerError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        TinkerError._classes[_key(cls)] = cls

    def to_payload(self) -> dict[str, Any]:
        """This error as plain data: ``type`` (class name), ``classes`` (``"module:qualname"`` of
        the class and its ``TinkerError`` ancestors, most specific first), ``message``,
        ``status_code``, ``retryable`` and ``attributes`` (the instance's plain attributes, e.g.
        ``field`` and ``problem`` of a ``BadRequestError``)."""
        return {
            "type": type(self).__name__,
            "classes": [_key(c) for c in type(self).__mro__ if isinstance(c, type) and issubclass(c, TinkerError)],
            "message": str(self),
            "status_code": self.status_code,
            "retryable": self.retryable,
            "attributes": {k: v for k, v in vars(self).items() if _plain(v)},
        }

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle through the payload: the default (``cls(*args)``) fails for every error whose
        constructor takes other arguments than its message (``BadRequestError(field, problem)``),
        e.g. a ``NonFiniteError`` raised on an fsdp rank and sent back in a result list."""
        return (TinkerError.from_payload, (self.to_payload(),))

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> TinkerError:
        """The error ``to_payload`` encoded: an instance of the most specific of its classes that
        is defined in this process (at least ``TinkerError``), with its message and attributes.
        No constructor runs and nothing is imported."""
        found = next((TinkerError._classes[k] for k in payload.get("classes", ()) if k in TinkerError._classes), None)
        cls = found or TinkerError
        error = cls.__new__(cls)
        Exception.__init__(error, payload["message"])
        for name, value in dict(payload.get("attributes") or {}).items():
            setattr(error, name, value)
        return error


class APIError(TinkerError):
    """The tinker SDK's base of the errors an API call answers (everything but ``RequestFailedError``
    and tinker-std's own environment and storage errors): ``except APIError`` catches the same here."""


class APIStatusError(APIError):
    """The tinker SDK's base of the errors an API answers with an HTTP status (``status_code``)."""


class BadRequestError(APIStatusError):
    """A request was rejected before it changed any state.

    ``field`` names the offending field with a dotted path such as ``data[2].loss_fn_inputs.weights``
    or ``sampling_params.top_p``; ``problem`` says what is wrong with it.
    """

    status_code = 400

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ContextLengthError(BadRequestError):
    """A sequence is longer than the model's maximum context length."""


class NotFoundError(APIStatusError):
    """A model, checkpoint, sampler or training client does not exist."""

    status_code = 404


class ConflictError(APIStatusError):
    """A checkpoint already exists under the requested name and ``overwrite`` was not set."""

    status_code = 409


class RequestFailedError(TinkerError):
    """A request was accepted but failed while the backend executed it.

    ``category`` is ``"user"`` when the request itself was at fault, ``"server"`` when the backend
    failed, ``"unknown"`` otherwise. The original exception is chained as ``__cause__``.
    """

    status_code = 500

    def __init__(self, message: str, *, request_id: str = "", category: str = "unknown") -> None:
        self.request_id = request_id
        self.category = category
        super().__init__(message)


class Unsupported(APIStatusError):
    """An optional capability was requested from a backend that does not declare it."""

    def __init__(self, capability: str, backend: str) -> None:
        self.capability = capability
        self.backend = backend
        super().__init__(f"backend {backend!r} does not declare the optional capability {capability!r}")


class BackendValidationError(TinkerError):
    """A backend class does not satisfy the backend contract (raised at registration)."""

    status_code = 500


class IncompatibleEnvironmentError(TinkerError):
    """The installed packages cannot run a backend (raised when the backend starts, before any request).

    ``installed`` maps each package involved to its installed version (``"not installed"`` when
    absent); ``fix`` is a command that installs a working set.
    """

    status_code = 500

    def __init__(self, problem: str, *, installed: dict[str, str], fix: str) -> None:
        self.problem = problem
        self.installed = installed
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}")


class NonFiniteError(BadRequestError):
    """A loss or a gradient norm is not finite (NaN, or an overflow of the backend's float type).

    Raised before the request changed any state (FB-15, OPT-10): a ``forward``/``forward_backward``
    whose loss is not finite accumulates nothing; an ``optim_step`` whose gradient norm is not
    finite leaves weights and AdamW moments untouched and discards the accumulated gradient.
    """


class CorruptCheckpointError(TinkerError):
    """A checkpoint's files do not match the digest written with it (damaged or truncated).

    ``path`` is the ``tinker://`` path of the checkpoint (never a file-system path, CKPT-14).
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"checkpoint {path} is corrupt: {problem}")


class StorageFullError(TinkerError):
    """The checkpoint store ran out of space (ENOSPC) or quota while saving; the previous checkpoint
    under that name, if any, is intact (CKPT-15). Retryable once space is freed."""

    status_code = 507
    retryable = True

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no space left to save {path}; the previous checkpoint under this name is unchanged")


class LimitExceededError(BadRequestError):
    """A request exceeds a documented limit (spec LIM): too many datums, samples or tokens, a LoRA
    rank too large, a body too big. ``field`` names what to reduce; nothing changed."""


TinkerError._classes[_key(TinkerError)] = TinkerError


def error_payload(exc: BaseException) -> dict[str, Any]:
    """``exc.to_payload()`` for a ``TinkerError``; any other exception as a ``RequestFailedError``
    of category ``server`` whose message names the original type."""
    if isinstance(exc, TinkerError):
        return exc.to_payload()
    return RequestFailedError(f"{type(exc).__name__}: {exc}", category="server").to_payload()
