"""``import tinker_std as tinker``: every top-level name of the SDK 0.38 is there or refused by name;
the pre-0.38 client futures (``BackcompatTrainingClientFuture``, ``BackcompatSamplingClientFuture``)
work as the client, with the SDK's ``FutureWarning``; ``LossHandle`` and ``loss_type_input`` in
``forward_backward_custom`` behave as in the SDK (on the mock backend, in process)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx

import tinker_std as tinker
from tinker_std import types
from tinker_std.sdk_names import REFUSED

sdk = pytest.importorskip("tinker")

BASE = "mock/tiny"
CE_DATUM = types.Datum(
    model_input=types.ModelInput.from_ints([1, 5, 9, 14]), loss_fn_inputs={"target_tokens": [5, 9, 14, 3]}
)
DATUM = types.Datum(
    model_input=types.ModelInput.from_ints([1, 5, 9, 14]),
    loss_fn_inputs={"target_tokens": [5, 9, 14, 3], "advantages": [0.5, -1.0, 2.0, 0.25]},
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tinker.ServiceClient]:
    svc = tinker.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "ckpt"))
    yield svc
    svc.close()


def test_every_sdk_top_level_name_is_provided_or_refused_by_name() -> None:
    missing = [n for n in sdk.__all__ if not n.startswith("__") and not hasattr(tinker, n)]
    assert sorted(missing) == sorted(REFUSED), "SDK names neither in tinker_std nor in sdk_names.REFUSED"
    for name in REFUSED:
        with pytest.raises(tinker.BadRequestError) as err:
            getattr(tinker, name)
        assert err.value.field == name
    with pytest.raises(AttributeError):
        tinker.not_an_sdk_name  # noqa: B018


def test_sdk_error_classes_catch_the_same_errors(service: tinker.ServiceClient) -> None:
    for cls in (tinker.BadRequestError, tinker.NotFoundError, tinker.ConflictError):
        assert issubclass(cls, tinker.APIStatusError) and issubclass(cls, tinker.APIError)
    assert not issubclass(tinker.RequestFailedError, tinker.APIError)  # as in the SDK
    assert issubclass(tinker.APITimeoutError, tinker.APIConnectionError)
    assert tinker.RateLimitError.status_code == 429
    with pytest.raises(tinker.APIStatusError):
        service.create_lora_training_client(base_model="")


def test_a_client_future_can_be_used_as_the_client(service: tinker.ServiceClient) -> None:
    future = service.create_lora_training_client(base_model=BASE, rank=4, seed=0)
    assert isinstance(future, tinker.BackcompatTrainingClientFuture) and isinstance(future, tinker.APIFuture)
    with pytest.warns(FutureWarning, match="forward_backward"):
        out = future.forward_backward([CE_DATUM], "cross_entropy").result()  # the pre-0.38 style
    with pytest.warns(FutureWarning):
        assert future.model_id == future.result().model_id
    sampler = future.result().save_weights_and_get_sampling_client()
    assert isinstance(sampler, tinker.BackcompatSamplingClientFuture)
    with pytest.warns(FutureWarning):
        scored = sampler.compute_logprobs(types.ModelInput.from_ints([1, 5, 9, 14, 3])).result()
    expected = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    np.testing.assert_allclose(np.array(scored[1:], dtype=float), expected, atol=1e-6)
    assert "BackcompatTrainingClientFuture" in repr(future)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(future.result(), tinker.TrainingClient)  # the 0.38 style warns nothing


def _handle(fn: object, names: tuple[str, ...], loss_id: str | None = None) -> tinker.LossHandle:
    inputs = tuple(sdk.types.CustomLossInput(name=n, rank=1) for n in ("logprobs", *names))
    return tinker.LossHandle(
        name="pg", inputs=inputs, session_id="s", graph=torch.fx.symbolic_trace(fn), loss_id=loss_id
    )


def _policy_gradient(logprobs: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = -(logprobs * advantages).sum()
    return loss, {"custom/pg:sum": loss, "custom/tokens:mean": (logprobs * 0 + 1).sum()}


def test_a_loss_handle_runs_per_datum_like_the_sdk(service: tinker.ServiceClient) -> None:
    handle = _handle(_policy_gradient, ("advantages",))
    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    out = tc.forward_backward_custom([DATUM, DATUM], handle).result()
    grads = tc.read_state().result().grads
    # Independent references: the value from the forward's logprobs; the gradient from the built-in
    # importance_sampling loss -sum(A * exp(lp - q)) at q = lp, whose gradient is that of -sum(A * lp).
    ref = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    logprobs = ref.forward([CE_DATUM], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    advantages = np.array([0.5, -1.0, 2.0, 0.25])
    expected_loss = -2 * float((logprobs * advantages).sum())
    assert out.metrics["loss:sum"] == pytest.approx(expected_loss, abs=1e-5)
    assert out.metrics["custom/pg:sum"] == pytest.approx(expected_loss, abs=1e-5)  # summed over the data
    assert out.metrics["custom/tokens:mean"] == pytest.approx(4.0)  # averaged over the data
    rl = types.Datum(
        model_input=DATUM.model_input,
        loss_fn_inputs={
            "target_tokens": [5, 9, 14, 3],
            "advantages": advantages.tolist(),
            "logprobs": logprobs.tolist(),
        },
    )
    ref.forward_backward([rl, rl], "importance_sampling").result()
    for key, value in ref.read_state().result().grads.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-4, atol=1e-6, err_msg=key)  # float32 surrogate weights


def test_loss_handle_and_loss_type_input_refusals(service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    handle = _handle(_policy_gradient, ("advantages",))
    with pytest.warns(DeprecationWarning, match="loss_type_input"):
        tc.forward_backward_custom([DATUM], handle, loss_type_input="logprobs").result()
    refused = {
        "loss_type_input": lambda: tc.forward_backward_custom([DATUM], handle, loss_type_input="probs"),
        "data[0].loss_fn_inputs.advantages": lambda: tc.forward_backward_custom([CE_DATUM], handle),
        "loss_fn": lambda: tc.forward_backward_custom([DATUM], _handle(_policy_gradient, ("advantages",), "loss-1")),
    }
    before = tc.read_state().result()
    for name, call in refused.items():
        with pytest.raises(tinker.BadRequestError) as err:
            call()
        assert err.value.field == name, (name, err.value)
    after = tc.read_state().result()
    assert all(np.array_equal(before.grads[k], after.grads[k]) for k in before.grads)
