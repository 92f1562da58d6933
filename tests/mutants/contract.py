"""Mutants of the backend contract and capability statements (spec/09-backends.md, BE and CAP)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import tinker_std as ts
from tinker_std import registry
from tinker_std.backends.mock import MockBackend
from tinker_std.capabilities import OPTIONAL_CAPABILITIES, Capabilities
from tinker_std.client import validation
from tinker_std.client.ordering import RequestLane
from tinker_std.client.session import BackendSession
from tinker_std.types import Datum, ForwardBackwardOutput

from . import Mutant
from ._mock import PatchingMock, replace

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_backend_contract::"
LAYER = "tinker_std.conformance.test_client_layer::"
ERRORS = "tinker_std.conformance.test_errors::"


def _unchecked(optional: Any) -> Capabilities:
    """A ``Capabilities`` whose ``optional`` skipped the constructor's checks."""
    caps = Capabilities.everything(tolerance="mock")
    object.__setattr__(caps, "optional", optional)
    return caps


class MutableCapabilitiesMock(MockBackend):
    """BE-1: the capability declaration is not frozen (``optional`` is a mutable ``set``)."""

    name: ClassVar[str] = "mock-mutable-capabilities"
    capabilities: ClassVar[Capabilities] = _unchecked(set(OPTIONAL_CAPABILITIES))


class PositionalOptionsMock(MockBackend):
    """BE-2: ``__init__`` takes its option positionally."""

    name: ClassVar[str] = "mock-positional-options"

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        super().__init__(checkpoint_dir=checkpoint_dir)


class OverlappingLaneMock(PatchingMock):
    """BE-3: the client layer does not wait for a model's earlier request before starting the
    next one, so one model's calls overlap on the backend."""

    name: ClassVar[str] = "mock-overlapping-lane"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            async def run(self: RequestLane, ticket: int, operation: Callable[[], Awaitable[Any]]) -> Any:
                await asyncio.sleep(0)
                return await operation()

            return run

        replace(RequestLane, "run", make)


class SwappedClipConfigMock(PatchingMock):
    """BE-4: the client layer hands the backend the two clip thresholds swapped."""

    name: ClassVar[str] = "mock-swapped-clip-config"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _resolve_config(spec: Any, config: Mapping[str, Any] | None) -> dict[str, float]:
                resolved: dict[str, float] = original(spec, config)
                low, high = "clip_low_threshold", "clip_high_threshold"
                if low in resolved and high in resolved:
                    resolved[low], resolved[high] = resolved[high], resolved[low]
                return resolved

            return _resolve_config

        replace(validation, "_resolve_config", make)


class WrappedTinkerErrorMock(PatchingMock):
    """BE-5: a ``TinkerError`` raised by the backend reaches the caller wrapped in
    ``RequestFailedError`` instead of unchanged."""

    name: ClassVar[str] = "mock-wrapped-tinker-error"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def submit(self: BackendSession, operation: Any) -> Any:
                async def wrapped(backend: Any) -> Any:
                    try:
                        return await operation(backend)
                    except (ts.BadRequestError, ts.ConflictError, ts.Unsupported):
                        raise
                    except ts.TinkerError as exc:
                        raise ts.RequestFailedError(str(exc), category="server") from exc

                return original(self, wrapped)

            return submit

        replace(BackendSession, "submit", make)


class UnlistedBackendsMock(PatchingMock):
    """BE-7: an unknown backend name raises ``NotFoundError`` without listing the known names."""

    name: ClassVar[str] = "mock-unlisted-backends"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def load_backend_class(name: str) -> Any:
                try:
                    return original(name)
                except ts.NotFoundError:
                    raise ts.NotFoundError(f"unknown backend {name!r}") from None

            return load_backend_class

        replace(registry, "load_backend_class", make)


class IgnoresEnvironmentBackendMock(PatchingMock):
    """BE-8: ``ServiceClient()`` ignores ``TINKER_STD_BACKEND`` and always picks the default."""

    name: ClassVar[str] = "mock-ignores-environment-backend"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def default_backend_name() -> str:
                import importlib.util

                return "torch" if all(importlib.util.find_spec(m) for m in ("transformers", "peft")) else "mock"

            return default_backend_name

        replace(registry, "default_backend_name", make)


class LaxValidationMock(PatchingMock):
    """BE-9: the registry accepts a class without ``name`` or with an undeclared ``capabilities``."""

    name: ClassVar[str] = "mock-lax-validation"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def validate_backend_class(klass: Any) -> Any:
                if isinstance(klass, type) and issubclass(klass, ts.Backend):
                    return klass
                return original(klass)

            return validate_backend_class

        replace(registry, "validate_backend_class", make)


class RefusesPpoMock(MockBackend):
    """CAP-1: a required feature (the ``ppo`` loss) is refused with ``Unsupported``."""

    name: ClassVar[str] = "mock-refuses-ppo"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if loss_fn == "ppo":
            raise ts.Unsupported("loss:ppo", self.name)
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)


class UnknownCapabilityMock(MockBackend):
    """CAP-2: the declaration holds a name outside CAP-2's list."""

    name: ClassVar[str] = "mock-unknown-capability"
    capabilities: ClassVar[Capabilities] = _unchecked(frozenset({*OPTIONAL_CAPABILITIES, "flash_sampling"}))


class DeclaredButRefusedMock(MockBackend):
    """CAP-3: ``introspection`` is declared, but ``read_state`` refuses with ``Unsupported``."""

    name: ClassVar[str] = "mock-declared-but-refused"

    async def read_state(self, model_id: str) -> Any:
        raise ts.Unsupported("introspection", self.name)


class AcceptsUndeclaredLossMock(PatchingMock):
    """CAP-4: the client layer does not check the loss against the declared capabilities, so an
    undeclared ``cispo``/``dro``/``gspo`` reaches the backend."""

    name: ClassVar[str] = "mock-accepts-undeclared-loss"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _resolve_loss(loss_fn: Any, caps: Capabilities, backend: str) -> Any:
                return original(loss_fn, Capabilities.everything(), backend)

            return _resolve_loss

        replace(validation, "_resolve_loss", make)


def _m(cls: type, statement: str, *tests: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.contract:{cls.__name__}",
        statement=statement,
        selection=tuple(t if t.startswith("tinker_std.") else T + t for t in tests),
        also=frozenset(also),
        slow=slow,
    )


MUTANTS = [
    _m(MutableCapabilitiesMock, "BE-1", "test_the_class_declares_name_capabilities_and_tolerance", slow=True),
    _m(PositionalOptionsMock, "BE-2", LAYER + "test_the_backend_implements_the_contract_signatures", slow=True),
    _m(OverlappingLaneMock, "BE-3", LAYER + "test_the_backend_sees_one_call_per_model_at_a_time_in_order"),
    _m(SwappedClipConfigMock, "BE-4", LAYER + "test_the_backend_receives_only_declared_config_keys"),
    _m(WrappedTinkerErrorMock, "BE-5", LAYER + "test_backend_exceptions_become_typed_errors"),
    _m(UnlistedBackendsMock, "BE-7", "test_the_registry_finds_and_validates_the_class", slow=True),
    _m(IgnoresEnvironmentBackendMock, "BE-8", "test_service_client_uses_the_environment_backend", slow=True),
    _m(LaxValidationMock, "BE-9", "test_the_registry_finds_and_validates_the_class", slow=True),
    _m(RefusesPpoMock, "CAP-1", "test_every_required_feature_works"),
    _m(UnknownCapabilityMock, "CAP-2", "test_the_class_declares_name_capabilities_and_tolerance", slow=True),
    _m(DeclaredButRefusedMock, "CAP-3", "test_every_declared_capability_is_honoured"),
    _m(AcceptsUndeclaredLossMock, "CAP-4", ERRORS + "test_a_backend_without_optional_capabilities_refuses_them"),
]
