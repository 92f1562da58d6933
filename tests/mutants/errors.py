"""Mutants of the error statements (spec/09-backends.md, ERR).

Request validation and error conversion belong to the shared client layer, so these replace one
client-layer function (``mutants._mock.PatchingMock``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import tinker_std as ts
from tinker_std import errors as errors_module
from tinker_std.client import validation
from tinker_std.client.session import BackendSession

from . import Mutant
from ._mock import PatchingMock, replace

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_errors::"


class UnsupportedWithoutBackendMock(PatchingMock):
    """ERR-1: ``Unsupported``'s message names the capability but not the backend."""

    name: ClassVar[str] = "mock-unsupported-without-backend"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def __init__(self: ts.Unsupported, capability: str, backend: str) -> None:
                original(self, capability, backend)
                self.args = (f"the optional capability {capability!r} is not declared",)

            return __init__

        replace(errors_module.Unsupported, "__init__", make)


class AcceptsNonFiniteMock(PatchingMock):
    """ERR-3: non-finite ``weights``/``advantages``/``logprobs`` pass validation (LOSS-13); the loss's
    own finite check (FB-15) still refuses them before any state changes, but names the field
    ``loss_fn_inputs`` instead of ``data[i].loss_fn_inputs.<key>``."""

    name: ClassVar[str] = "mock-accepts-non-finite"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _check_input(field: str, tensor: Any, dtype: str, shape: list[int], finite: bool) -> None:
                original(field, tensor, dtype, shape, False)

            return _check_input

        replace(validation, "_check_input", make)


class AcceptsShapeMismatchMock(PatchingMock):
    """ERR-2: a loss input of the wrong shape (ALN-3) passes validation and fails in the backend."""

    name: ClassVar[str] = "mock-accepts-shape-mismatch"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _check_input(field: str, tensor: Any, dtype: str, shape: list[int], finite: bool) -> None:
                original(field, tensor, dtype, list(tensor.resolved_shape), finite)

            return _check_input

        replace(validation, "_check_input", make)


class ProblemOnlyMessageMock(PatchingMock):
    """ERR-3: ``str(BadRequestError)`` is the problem alone, without ``"<field>: "``."""

    name: ClassVar[str] = "mock-problem-only-message"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def __init__(self: ts.BadRequestError, field: str, problem: str) -> None:
                original(self, field, problem)
                self.args = (problem,)

            return __init__

        replace(errors_module.BadRequestError, "__init__", make)


class PlainContextErrorMock(PatchingMock):
    """ERR-4: a sequence longer than the context is a plain ``BadRequestError``, not
    ``ContextLengthError``."""

    name: ClassVar[str] = "mock-plain-context-error"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _check_tokens(field: str, tokens: Any, vocab_size: int, max_len: int) -> None:
                try:
                    original(field, tokens, vocab_size, max_len)
                except ts.ContextLengthError as exc:
                    raise ts.BadRequestError(exc.field, exc.problem) from None

            return _check_tokens

        replace(validation, "_check_tokens", make)


class UnchainedFailureMock(PatchingMock):
    """ERR-5: a backend failure becomes ``RequestFailedError`` without the original exception as
    ``__cause__``, and with category ``"unknown"``."""

    name: ClassVar[str] = "mock-unchained-failure"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def submit(self: BackendSession, operation: Any) -> Any:
                async def unchained(backend: Any) -> Any:
                    try:
                        return await operation(backend)
                    except ts.TinkerError:
                        raise
                    except Exception as exc:
                        raise ts.RequestFailedError(f"{type(exc).__name__}: {exc}", category="unknown") from None

                return original(self, unchained)

            return submit

        replace(BackendSession, "submit", make)


def _m(cls: type, statement: str, *tests: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.errors:{cls.__name__}",
        statement=statement,
        selection=tuple(t if t.startswith("tinker_std.") else T + t for t in tests),
        also=frozenset(also),
        slow=slow,
    )


MUTANTS = [
    _m(UnsupportedWithoutBackendMock, "ERR-1", "test_a_backend_without_optional_capabilities_refuses_them", slow=True),
    _m(AcceptsNonFiniteMock, "ERR-3", "test_each_kind_of_invalid_request_is_refused", also=("LOSS-13", "ERR-2")),
    _m(AcceptsShapeMismatchMock, "ERR-2", "test_each_kind_of_invalid_request_is_refused", also=("ALN-3", "ERR-3")),
    _m(ProblemOnlyMessageMock, "ERR-3", "test_each_kind_of_invalid_request_is_refused"),
    _m(PlainContextErrorMock, "ERR-4", "test_each_kind_of_invalid_request_is_refused", slow=True),
    _m(
        UnchainedFailureMock,
        "ERR-5",
        "tinker_std.conformance.test_client_layer::test_backend_exceptions_become_typed_errors",
        also=("BE-5",),
    ),
]
