"""Backend registry, capability declarations and ``Unsupported`` (spec BE, CAP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.backends.mock import MockBackend
from tinker_std.registry import available_backends, create_backend, load_backend_class, validate_backend_class

from _support import MODEL, sequence_datum


class NoOptionalMock(MockBackend):
    """The mock with every optional capability undeclared: the client layer must refuse them."""

    name = "mock-minimal"
    capabilities = ts.Capabilities(optional=frozenset(), tolerance="mock")


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(ts.NotFoundError, match="mock"):
        load_backend_class("no-such-backend")


def test_builtin_entry_point_and_module_path_resolve_to_the_same_class() -> None:
    assert available_backends()["mock"] == "tinker_std.backends.mock:MockBackend"
    assert load_backend_class("mock") is MockBackend
    assert load_backend_class("tinker_std.backends.mock:MockBackend") is MockBackend
    from importlib.metadata import entry_points

    assert "mock" in {ep.name for ep in entry_points(group="tinker_std.backends")}


def test_default_backend_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_BACKEND", "tests_no_such")
    with pytest.raises(ts.NotFoundError, match="tests_no_such"):
        create_backend(None, {})
    monkeypatch.setenv("TINKER_STD_BACKEND", "mock")
    assert isinstance(create_backend(None, {}), MockBackend)


def test_incomplete_backend_class_is_rejected_at_registration() -> None:
    class Incomplete(ts.Backend):
        name = "incomplete"
        capabilities = ts.Capabilities()

    with pytest.raises(ts.BackendValidationError, match="create_model"):
        validate_backend_class(Incomplete)

    class NoCapabilities(MockBackend):
        capabilities = None  # type: ignore[assignment]

    with pytest.raises(ts.BackendValidationError, match="capabilities"):
        validate_backend_class(NoCapabilities)


def test_capabilities_are_read_without_starting_the_backend() -> None:
    caps = MockBackend.capabilities
    assert caps.supports("introspection") and caps.supports("loss:gspo") and caps.tolerance == "mock"
    assert caps.supports("loss:cross_entropy") and not NoOptionalMock.capabilities.supports("loss:cispo")
    with pytest.raises(ValueError, match="unknown capabilities"):
        ts.Capabilities(optional=frozenset({"teleportation"}))


def test_undeclared_optional_features_raise_unsupported_and_change_nothing(tmp_path: Path) -> None:
    with ts.ServiceClient(backend=NoOptionalMock, checkpoint_dir=str(tmp_path)) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result()
        datum = sequence_datum([1, 2, 3, 4])
        before = tc.forward([datum]).result().loss_fn_outputs[0]["logprobs"].to_numpy()
        rl = ts.Datum(
            model_input=datum.model_input,
            loss_fn_inputs={"target_tokens": [2, 3, 4], "advantages": [1.0] * 3, "logprobs": [-1.0] * 3},
        )
        for loss in ("cispo", "dro", "gspo"):
            with pytest.raises(ts.Unsupported) as info:
                tc.forward_backward([rl], loss)
            assert info.value.capability == f"loss:{loss}" and info.value.backend == "mock-minimal"
        soft = ts.Datum(
            model_input=datum.model_input, loss_fn_inputs={"target_tokens": np.ones((3, 2), dtype=np.int64)}
        )
        with pytest.raises(ts.Unsupported, match="soft_targets"):
            tc.forward_backward([soft], "cross_entropy")
        with pytest.raises(ts.Unsupported, match="introspection"):
            tc.read_state()
        sampler = service.create_sampling_client(base_model=MODEL).result()
        with pytest.raises(ts.Unsupported, match="topk_prompt_logprobs"):
            sampler.sample(datum.model_input, 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=3)
        tc.optim_step(ts.AdamParams(learning_rate=0.1)).result()  # no gradient was accumulated above
        after = tc.forward([datum]).result().loss_fn_outputs[0]["logprobs"].to_numpy()
        np.testing.assert_array_equal(before, after)
