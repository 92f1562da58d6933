"""The backend class: declaration, registry, capabilities, tolerance class (spec BE, CAP, TOL-1)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import tinker_std as ts
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import TOLERANCES
from tinker_std.registry import load_backend_class, validate_backend_class

#: The optional capability names of CAP-2.
CAP2_NAMES = frozenset(
    {
        "loss:cispo",
        "loss:dro",
        "loss:gspo",
        "loss:stable_reinforce",
        "soft_targets",
        "introspection",
        "deterministic",
        "seeded_sampling",
        "topk_prompt_logprobs",
        "topk_sample_logprobs",
        "checkpoint_management",
    }
)


@pytest.mark.spec("BE-1", "CAP-2", "CAP-3", "TOL-1")
def test_the_class_declares_name_capabilities_and_tolerance(conformance_backend: ConformanceBackend) -> None:
    cls = conformance_backend.cls
    assert issubclass(cls, ts.Backend), "[BE-1] a backend derives from tinker_std.Backend"
    assert isinstance(cls.name, str) and cls.name, "[BE-1] class attribute `name`"
    caps = cls.capabilities
    assert isinstance(caps, ts.Capabilities), "[BE-1] class attribute `capabilities`"
    assert set(caps.optional) <= CAP2_NAMES, f"[CAP-2] unknown capabilities {sorted(set(caps.optional) - CAP2_NAMES)}"
    assert caps.tolerance in TOLERANCES, f"[TOL-1] tolerance class {caps.tolerance!r}"
    for required in ("loss:cross_entropy", "loss:importance_sampling", "loss:ppo"):
        assert caps.supports(required), f"[CAP-1] {required} is required of every backend"
    with pytest.raises(ValueError):
        ts.Capabilities(optional=frozenset({"flying"}))


@pytest.mark.spec("BE-7", "BE-9")
def test_the_registry_finds_and_validates_the_class(conformance_backend: ConformanceBackend) -> None:
    cls = conformance_backend.cls
    assert load_backend_class(f"{cls.__module__}:{cls.__qualname__}") is cls, "[BE-7] module:Class lookup"
    assert load_backend_class(conformance_backend.spec) is cls, "[BE-7] lookup of the name under test"
    with pytest.raises(ts.NotFoundError) as err:
        load_backend_class("no-such-backend-xyz")
    assert "mock" in str(err.value), f"[BE-7] the message must list known backends: {err.value}"

    class Nameless(cls):  # type: ignore[valid-type,misc]
        name: ClassVar[Any] = None

    class Undeclared(cls):  # type: ignore[valid-type,misc]
        capabilities: ClassVar[Any] = {"optional": []}

    for broken in (Nameless, Undeclared, object):
        with pytest.raises(ts.BackendValidationError):
            validate_backend_class(broken)


@pytest.mark.spec("BE-8")
def test_service_client_uses_the_environment_backend(
    conformance_backend: ConformanceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_STD_BACKEND", conformance_backend.spec)
    client = ts.ServiceClient(**conformance_backend.options)
    try:
        assert client.backend_name == conformance_backend.name, f"[BE-8] got backend {client.backend_name!r}"
    finally:
        client.close()
    monkeypatch.delenv("TINKER_STD_BACKEND")
    import importlib.util

    expected = "torch" if all(importlib.util.find_spec(m) for m in ("transformers", "peft")) else "mock"
    client = ts.ServiceClient()
    try:
        assert client.backend_name == expected, f"[BE-8] the default backend is {expected}"
    finally:
        client.close()
