"""The backend class: declaration, registry, capabilities, tolerance class (spec BE, CAP, TOL-1)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import ADAM, rl_datum, sequence_datum
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
        "target_prompt_logprobs",
        "prompt_alt_tokens",
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
    assert isinstance(caps.optional, frozenset), f"[BE-1] capabilities.optional is a {type(caps.optional).__name__}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.tolerance = "mock"  # type: ignore[misc]
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
        try:
            validate_backend_class(broken)
        except ts.BackendValidationError:
            continue
        raise AssertionError(f"[BE-9] validate_backend_class accepted {broken.__name__}")


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


def _rl(v: int) -> list[ts.Datum]:
    return [rl_datum([(3 * i + 1) % v for i in range(6)], [1.0, -0.5, 0.5, 0.0, 1.0], [-2.0] * 5)]


@contextlib.contextmanager
def _not_refused(statement: str, feature: str) -> Iterator[None]:
    """``Unsupported`` raised inside the block fails ``statement``."""
    try:
        yield
    except ts.Unsupported as exc:
        raise AssertionError(f"[{statement}] {feature} was refused: {exc}") from exc


@pytest.mark.spec("CAP-1")
def test_every_required_feature_works(
    conformance_backend: ConformanceBackend,
    training_client: Callable[..., ts.TrainingClient],
    service: ts.ServiceClient,
) -> None:
    """One request of each feature CAP-1's table requires of every backend; none is refused."""
    v = conformance_backend.vocab_size
    ce = [sequence_datum([(5 * i + 2) % v for i in range(6)], [1.0] * 5)]
    rl = _rl(v)
    tc = training_client()
    for loss_fn, data in (("cross_entropy", ce), ("importance_sampling", rl), ("ppo", rl)):
        with _not_refused("CAP-1", f"loss {loss_fn}"):
            tc.forward_backward(data, loss_fn).result(timeout=120)
            tc.forward(data, loss_fn).result(timeout=120)
    with _not_refused("CAP-1", "forward_backward_custom"):
        custom = tc.forward_backward_custom(ce, lambda d, lps: (-lps[0].sum(), {})).result(timeout=120)
    assert "loss:sum" in custom.metrics, "[CAP-1] forward_backward_custom gave no loss:sum"
    with _not_refused("CAP-1", "optim_step"):
        tc.optim_step(ADAM).result(timeout=120)
    with _not_refused("CAP-1", "save_state and save_weights_for_sampler"):
        weights = tc.save_state("cap-1").result(timeout=120).path
        sampler_path = tc.save_weights_for_sampler("cap-1").result(timeout=120).path
    with _not_refused("CAP-1", "loading a checkpoint"):
        service.create_training_client_from_state(weights).result(timeout=120)
        service.create_training_client_from_state_with_optimizer(weights).result(timeout=120)
    with _not_refused("CAP-1", "snapshot and checkpoint samplers"):
        samplers = [
            tc.save_weights_and_get_sampling_client().result(timeout=120),
            service.create_sampling_client(model_path=sampler_path).result(timeout=120),
        ]
    prompt = ts.ModelInput.from_ints([1 % v, 2 % v, 3 % v])
    for sc in samplers:
        for stop in (None, [], [7 % v], "a"):
            params = ts.SamplingParams(max_tokens=2, seed=None, stop=stop, temperature=1.0, top_k=-1, top_p=1.0)
            with _not_refused("CAP-1", f"sample with prompt logprobs and stop={stop!r}"):
                sc.sample(prompt, 2, params, include_prompt_logprobs=True).result(timeout=120)
        with _not_refused("CAP-1", "compute_logprobs"):
            sc.compute_logprobs(prompt).result(timeout=120)


def _declared_requests(
    v: int, tc: ts.TrainingClient, service: ts.ServiceClient, sc: ts.SamplingClient
) -> dict[str, Callable[[], Any]]:
    """capability -> a check that a request of it is served (raises AssertionError when not)."""
    rl = _rl(v)
    masked = [
        ts.Datum(model_input=d.model_input, loss_fn_inputs={**d.loss_fn_inputs, "sequence_ratio_mask": [1.0] * 5})
        for d in rl
    ]
    soft = ts.Datum(
        model_input=ts.ModelInput.from_ints([1 % v, 2 % v, 3 % v]),
        loss_fn_inputs={"target_tokens": np.array([[2 % v, 4 % v]] * 3), "weights": np.array([[0.5, 0.5]] * 3)},
    )
    prompt = ts.ModelInput.from_ints([1 % v, 2 % v, 3 % v])

    def seeded() -> None:
        params = ts.SamplingParams(max_tokens=4, seed=11, stop=None, temperature=1.0, top_k=-1, top_p=1.0)
        a, b = (sc.sample(prompt, 2, params).result(timeout=120) for _ in range(2))
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences], "[CAP-3] seeded_sampling"

    def deterministic() -> None:
        a, b = (tc.forward(rl, "importance_sampling").result(timeout=120) for _ in range(2))
        assert a.metrics["loss:sum"] == b.metrics["loss:sum"], "[CAP-3] deterministic: forward is not bit-exact"

    def topk() -> None:
        params = ts.SamplingParams(max_tokens=1, seed=None, stop=None, temperature=1.0, top_k=-1, top_p=1.0)
        out = sc.sample(prompt, 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=2).result(timeout=120)
        rows = out.topk_prompt_logprobs or []
        assert len(rows) == 3 and rows[1] is not None and len(rows[1]) == 2, f"[CAP-3] topk_prompt_logprobs: {rows}"

    def topk_sample() -> None:
        params = ts.SamplingParams(max_tokens=2, seed=None, stop=None, temperature=1.0, top_k=-1, top_p=1.0)
        out = sc.sample(prompt, 1, params, topk_sample_logprobs=2).result(timeout=120)
        rows = out.sequences[0].topk_logprobs or []
        assert len(rows) == len(out.sequences[0].tokens) and all(r is not None and len(r) == 2 for r in rows), (
            f"[CAP-3] topk_sample_logprobs: {rows}"
        )

    return {
        "loss:cispo": lambda: tc.forward(rl, "cispo").result(timeout=120),
        "loss:dro": lambda: tc.forward(rl, "dro").result(timeout=120),
        "loss:gspo": lambda: tc.forward(masked, "gspo").result(timeout=120),
        "soft_targets": lambda: tc.forward([soft], "cross_entropy").result(timeout=120),
        "introspection": lambda: tc.read_state().result(timeout=120),
        "deterministic": deterministic,
        "seeded_sampling": seeded,
        "topk_prompt_logprobs": topk,
        "topk_sample_logprobs": topk_sample,
        "target_prompt_logprobs": lambda: sc.sample(  # prompt has 3 tokens: one id at each of positions 1, 2
            prompt,
            1,
            ts.SamplingParams(max_tokens=1),
            target_prompt_logprobs=ts.TensorData(data=[1 % v, 2 % v], dtype="int64", shape=[2, 1]),
        ).result(timeout=120),
        "prompt_alt_tokens": lambda: (
            sc.sample(prompt, 1, ts.SamplingParams(max_tokens=1), prompt_alt_tokens_k=2)
            .result(timeout=120)
            .prompt_alt_tokens
        ),
        "checkpoint_management": lambda: service.create_rest_client().list_training_runs().result(timeout=120),
    }


@pytest.mark.spec("CAP-3")
def test_every_declared_capability_is_honoured(
    conformance_backend: ConformanceBackend,
    training_client: Callable[..., ts.TrainingClient],
    service: ts.ServiceClient,
) -> None:
    """A declaration is a promise: one request of each declared capability is served, not refused
    (the statements tagged with the capability check it in depth)."""
    tc = training_client()
    sc = tc.save_weights_and_get_sampling_client().result(timeout=120)
    v = conformance_backend.vocab_size
    checks = _declared_requests(v, tc, service, sc)
    for capability in sorted(conformance_backend.capabilities.optional):
        check = checks.get(capability)
        if check is None and capability.startswith("loss:"):
            check = functools.partial(_any_loss_request, tc, capability.removeprefix("loss:"), _rl(v))
        assert check is not None, f"[CAP-2] the suite knows no request of capability {capability!r}"
        with _not_refused("CAP-3", f"declared capability {capability}"):
            check()


def _any_loss_request(tc: ts.TrainingClient, loss_fn: str, data: list[ts.Datum]) -> None:
    """A forward with a declared loss that has no entry of its own: refused is a failure; a
    ``BadRequestError`` about its inputs means the capability check was passed."""
    try:
        tc.forward(data, loss_fn).result(timeout=120)
    except ts.BadRequestError as exc:
        assert exc.field != "loss_fn", f"[CAP-3] declared loss {loss_fn!r} is unknown: {exc}"
