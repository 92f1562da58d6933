"""Bad input gets a typed error naming the field and changes nothing; undeclared features are
``Unsupported`` (spec ERR, ORD-4, ORD-5, CAP-4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given

import tinker_std as ts
from tinker_std.backends.mock import MockBackend
from tinker_std.conformance.helpers import ADAM, probe_batch, sequence_datum, snapshot
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.strategies import MalformedRequest, conformance_settings, malformed_requests
from tinker_std.conformance.tolerances import assert_mapping_close

Factory = Callable[..., ts.TrainingClient]

MALFORMED_STATEMENTS = (
    "ERR-2", "ERR-3", "ERR-4", "ORD-5", "ORD-4", "FB-8", "ALN-1", "ALN-3", "ALN-4", "ALN-5", "LOSS-8", "LOSS-10",
    "LOSS-11", "LOSS-12", "LOSS-13", "CKPT-1",
)  # fmt: skip


def _expect(request: MalformedRequest, client: Any) -> ts.TinkerError:
    """Make the call; return the error, checking type, field, message form and where it was raised."""
    ids = " ".join(f"[{s}]" for s in request.statements if s != "ERR-3")
    raised_by_call = True
    try:
        future = request.invoke(client)
    except ts.TinkerError as exc:
        error: BaseException = exc
    else:
        raised_by_call = False
        try:
            future.result(timeout=120)
        except ts.TinkerError as exc:
            error = exc
        else:
            raise AssertionError(f"{ids} {request!r}: the request succeeded")
    assert isinstance(error, request.error), f"{ids} {request!r}: got {type(error).__name__}: {error}"
    if request.from_call:
        assert raised_by_call, f"[ORD-5] {request!r}: a validation error must be raised by the call, not the future"
    field = getattr(error, "field", None)
    assert field in request.fields, f"[ERR-3] {request!r}: field {field!r}, expected one of {request.fields}"
    assert str(error) == f"{field}: {getattr(error, 'problem', None)}", f"[ERR-3] str(error) is {str(error)!r}"
    assert error.status_code == 400, f"[ERR-1] status_code {error.status_code}"
    return error


@pytest.mark.spec(*MALFORMED_STATEMENTS)
def test_malformed_training_requests_are_typed_and_change_nothing(
    conformance_backend: ConformanceBackend, make_training_client: Factory
) -> None:
    backend = conformance_backend
    introspection = backend.supports("introspection")
    probe = probe_batch(backend.vocab_size)
    tc = make_training_client()
    tc.forward_backward(probe, "cross_entropy")
    tc.optim_step(ADAM)
    tc.forward_backward(probe[:1], "cross_entropy")  # a pending gradient must survive too
    tc.save_state("kept").result()
    before = snapshot(tc, probe, introspection)

    @given(request=malformed_requests(backend.vocab_size, backend.max_context_length, ("training",)))
    @conformance_settings
    def check(request: MalformedRequest) -> None:
        _expect(request, tc)
        assert_mapping_close(
            snapshot(tc, probe, introspection), before, "token", "ERR-2", what=request.description, replay=True
        )

    check()
    # later requests still run normally (ORD-4)
    assert tc.forward_backward(probe, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
        tc.forward(probe).result().metrics["loss:sum"]
    )


@pytest.mark.spec("ERR-2", "ERR-3", "ERR-4", "ORD-5", "SMP-1", "SMP-2", "ALN-4")
def test_malformed_sampling_requests_are_typed(
    conformance_backend: ConformanceBackend, base_sampler: ts.SamplingClient
) -> None:
    backend = conformance_backend

    @given(request=malformed_requests(backend.vocab_size, backend.max_context_length, ("sampling",)))
    @conformance_settings
    def check(request: MalformedRequest) -> None:
        _expect(request, base_sampler)

    check()
    ok = base_sampler.sample(ts.ModelInput.from_ints([1]), 1, ts.SamplingParams(max_tokens=1)).result()
    assert len(ok.sequences) == 1


@pytest.mark.spec("LOSS-8", "ERR-1", "ERR-4")
def test_error_classes_and_messages(conformance_backend: ConformanceBackend, training_client: Factory) -> None:
    assert issubclass(ts.ContextLengthError, ts.BadRequestError), "[ERR-4]"
    for cls in (ts.BadRequestError, ts.NotFoundError, ts.ConflictError, ts.RequestFailedError, ts.Unsupported):
        assert issubclass(cls, ts.TinkerError), f"[ERR-1] {cls.__name__}"
    codes = (ts.BadRequestError.status_code, ts.NotFoundError.status_code, ts.ConflictError.status_code)
    assert codes == (400, 404, 409), f"[ERR-1] status codes {codes}"
    tc = training_client()
    with pytest.raises(ts.BadRequestError) as err:
        tc.forward_backward([sequence_datum([1, 2, 3])], "mse")
    for name in ts.types.LOSS_FN_TYPES:
        assert name in str(err.value), f"[LOSS-8] the message must list {name}: {err.value}"


# -- optional capabilities ------------------------------------------------------------------------


class BareMockBackend(MockBackend):
    """The mock backend declaring no optional capability (for the CAP-4 negative tests)."""

    name: ClassVar[str] = "mock-bare"
    capabilities: ClassVar[ts.Capabilities] = ts.Capabilities(optional=frozenset(), tolerance="mock")


def _undeclared_requests(v: int) -> dict[str, Callable[[ts.TrainingClient, ts.SamplingClient], Any]]:
    datum = sequence_datum([1 % v, 2 % v, 3 % v, 4 % v])
    rl = ts.Datum(
        model_input=datum.model_input,
        loss_fn_inputs={**datum.loss_fn_inputs, "advantages": [1.0, 0.0, -1.0], "logprobs": [-1.0] * 3},
    )
    soft = ts.Datum(model_input=datum.model_input, loss_fn_inputs={"target_tokens": np.array([[1, 2]] * 3)})
    prompt = ts.ModelInput.from_ints([1, 2])
    return {
        "loss:cispo": lambda tc, sc: tc.forward_backward([rl], "cispo"),
        "loss:dro": lambda tc, sc: tc.forward([rl], "dro"),
        "loss:gspo": lambda tc, sc: tc.forward_backward([rl], "gspo"),
        "loss:stable_reinforce": lambda tc, sc: tc.forward_backward([rl], "stable_reinforce"),
        "soft_targets": lambda tc, sc: tc.forward_backward([soft], "cross_entropy"),
        "topk_prompt_logprobs": lambda tc, sc: sc.sample(
            prompt, 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=2
        ),
        "introspection": lambda tc, sc: tc.read_state(),
        "topk_sample_logprobs": lambda tc, sc: sc.sample(
            prompt, 1, ts.SamplingParams(max_tokens=1), topk_sample_logprobs=2
        ),
        "target_prompt_logprobs": lambda tc, sc: sc.sample(
            prompt,
            1,
            ts.SamplingParams(max_tokens=1),
            target_prompt_logprobs=ts.TensorData(data=[1], dtype="int64", shape=[1, 1]),
        ),
        "prompt_alt_tokens": lambda tc, sc: sc.sample(
            prompt, 1, ts.SamplingParams(max_tokens=1), prompt_alt_tokens_k=2
        ),
    }


def _check_refused(
    capability: str, backend_name: str, call: Callable[[ts.TrainingClient, ts.SamplingClient], Any],
    tc: ts.TrainingClient, sc: ts.SamplingClient,
) -> None:  # fmt: skip
    try:
        result = call(tc, sc)  # raised by the call itself (ORD-5): no .result() needed
    except ts.Unsupported as exc:
        error = exc
    except ts.TinkerError as exc:
        raise AssertionError(f"[CAP-4] {capability} not declared: expected Unsupported, got {exc!r}") from exc
    else:
        try:
            result.result(timeout=120)
        except ts.Unsupported as exc:
            raise AssertionError(f"[ORD-5] {capability}: Unsupported came from the future, not the call") from exc
        except ts.TinkerError as exc:
            raise AssertionError(f"[CAP-4] {capability} not declared: expected Unsupported, got {exc!r}") from exc
        raise AssertionError(f"[CAP-4] {capability} is not declared by {backend_name}, yet the request was served")
    assert error.capability == capability, f"[CAP-4] capability {error.capability!r}"
    assert error.backend == backend_name, f"[CAP-4] backend {error.backend!r}"
    assert capability in str(error) and backend_name in str(error), f"[ERR-1] Unsupported's message: {error}"


@pytest.fixture(scope="module")
def bare_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(BareMockBackend, checkpoint_dir=str(Path(tmp_path_factory.mktemp("bare"))))
    yield service
    service.close()


@pytest.mark.spec("CAP-4", "CAP-1", "ERR-1", "ORD-5", "LOSS-8", "BE-1")
def test_a_backend_without_optional_capabilities_refuses_them(bare_service: ts.ServiceClient) -> None:
    tc = bare_service.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    sc = tc.save_weights_and_get_sampling_client().result()
    probe = probe_batch(258)
    before = tc.forward(probe).result()
    for capability, call in _undeclared_requests(258).items():
        _check_refused(capability, "mock-bare", call, tc, sc)
    try:
        bare_service.create_rest_client()
    except ts.Unsupported as exc:
        assert exc.capability == "checkpoint_management", f"[CAP-4] capability {exc.capability!r}"
    else:
        raise AssertionError("[CAP-4] create_rest_client without checkpoint_management was served")
    after = tc.forward(probe).result()
    assert before.metrics == after.metrics, "[CAP-4] a refused request changed state"
    # every MUST feature still works (CAP-1); a seed is accepted without seeded_sampling (CAP-4)
    for loss_fn in ("cross_entropy", "importance_sampling", "ppo"):
        data = (
            probe
            if loss_fn == "cross_entropy"
            else [
                ts.Datum(
                    model_input=d.model_input,
                    loss_fn_inputs={
                        **d.loss_fn_inputs,
                        "advantages": [0.5] * d.model_input.length,
                        "logprobs": [-1.0] * d.model_input.length,
                    },
                )
                for d in probe
            ]
        )
        tc.forward_backward(data, loss_fn).result()
    tc.optim_step(ADAM).result()
    sc.sample(
        ts.ModelInput.from_ints([1, 2]), 2, ts.SamplingParams(max_tokens=2, seed=3), include_prompt_logprobs=True
    ).result()
    tc.save_state("bare").result()


@pytest.mark.parametrize("capability", sorted(_undeclared_requests(258)))
@pytest.mark.spec("CAP-4", "ERR-1")
def test_the_backend_refuses_what_it_does_not_declare(
    capability: str, conformance_backend: ConformanceBackend, training_client: Factory, base_sampler: ts.SamplingClient
) -> None:
    if conformance_backend.supports(capability):
        pytest.skip(
            f"not applicable: capability {capability} is declared by backend {conformance_backend.name} "
            "(tested positively)"
        )
    tc = training_client()
    _check_refused(
        capability,
        conformance_backend.name,
        _undeclared_requests(conformance_backend.vocab_size)[capability],
        tc,
        base_sampler,
    )


def _invalid_requests(v: int, max_len: int) -> list[tuple[str, str, type[ts.TinkerError], str, Callable[[Any], Any]]]:
    """(statement, what, error, field, call on a training client): one request of each kind of
    ERR-2, each with every other input valid and every optional input given."""
    tokens = [1 % v, 2 % v, 3 % v, 4 % v]
    ce = {"target_tokens": [2 % v, 3 % v, 4 % v], "weights": [1.0, 1.0, 1.0]}
    rl = {"target_tokens": ce["target_tokens"], "advantages": [1.0, -1.0, 0.5], "logprobs": [-1.0, -2.0, -1.5]}

    def datum(**inputs: Any) -> list[ts.Datum]:
        return [ts.Datum(model_input=ts.ModelInput.from_ints(tokens[:3]), loss_fn_inputs=inputs)]

    long = [ts.Datum(
        model_input=ts.ModelInput.from_ints([1 % v] * (max_len + 1)),
        loss_fn_inputs={"target_tokens": [1 % v] * (max_len + 1), "weights": [1.0] * (max_len + 1)},
    )]  # fmt: skip
    bad_weights = "data[0].loss_fn_inputs.weights"
    return [
        ("ALN-3", "weights of the wrong length", ts.BadRequestError, bad_weights,
         lambda tc: tc.forward_backward(datum(target_tokens=ce["target_tokens"], weights=[1.0, 1.0]), "cross_entropy")),
        ("ALN-4", "a target token id >= V", ts.BadRequestError, "data[0].loss_fn_inputs.target_tokens",
         lambda tc: tc.forward_backward(datum(target_tokens=[2 % v, 3 % v, v], weights=[1.0] * 3), "cross_entropy")),
        ("LOSS-8", "an unknown loss", ts.BadRequestError, "loss_fn",
         lambda tc: tc.forward_backward(datum(**ce), "no_such_loss")),
        ("LOSS-10", "a missing input", ts.BadRequestError, "data[0].loss_fn_inputs.advantages",
         lambda tc: tc.forward_backward(datum(target_tokens=rl["target_tokens"], logprobs=rl["logprobs"]), "ppo")),
        ("LOSS-10", "an extra input", ts.BadRequestError, "data[0].loss_fn_inputs.advantages",
         lambda tc: tc.forward_backward(datum(**ce, advantages=[1.0, 1.0, 1.0]), "cross_entropy")),
        ("LOSS-11", "an unknown config key", ts.BadRequestError, "loss_fn_config.beta",
         lambda tc: tc.forward_backward(datum(**rl), "ppo", {"beta": 0.1})),
        ("LOSS-13", "a NaN weight", ts.BadRequestError, bad_weights,
         lambda tc: tc.forward_backward(datum(target_tokens=ce["target_tokens"], weights=[1.0, float("nan"), 1.0]),
                                        "cross_entropy")),
        ("LOSS-13", "an infinite advantage", ts.BadRequestError, "data[0].loss_fn_inputs.advantages",
         lambda tc: tc.forward_backward(datum(**{**rl, "advantages": [1.0, float("inf"), 1.0]}), "ppo")),
        ("ERR-4", "a sequence longer than the context", ts.ContextLengthError, "data[0].model_input",
         lambda tc: tc.forward_backward(long, "cross_entropy")),
    ]  # fmt: skip


@pytest.mark.spec("ERR-2", "ERR-3", "ERR-4")
def test_each_kind_of_invalid_request_is_refused(
    conformance_backend: ConformanceBackend, training_client: Factory, service: ts.ServiceClient
) -> None:
    backend = conformance_backend
    probe = probe_batch(backend.vocab_size)
    tc = training_client()
    tc.forward_backward(probe, "cross_entropy").result(timeout=120)  # a pending gradient must survive
    before = snapshot(tc, probe, backend.supports("introspection"))
    for statement, what, error, field, call in _invalid_requests(backend.vocab_size, backend.max_context_length):
        try:
            future = call(tc)
            future.result(timeout=120)
        except ts.TinkerError as exc:
            assert isinstance(exc, error), f"[ERR-2] [{statement}] {what}: got {type(exc).__name__}: {exc}"
            if error is ts.ContextLengthError:
                assert isinstance(exc, ts.ContextLengthError), f"[ERR-4] {what}: got {type(exc).__name__}"
            got = getattr(exc, "field", None)
            assert got == field, f"[ERR-3] {what}: field {got!r}, expected {field!r}"
            assert str(exc) == f"{field}: {exc.problem}", f"[ERR-3] {what}: str(error) is {str(exc)!r}"  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"[ERR-2] [{statement}] {what}: the request was accepted")
    after = snapshot(tc, probe, backend.supports("introspection"))
    assert_mapping_close(after, before, "token", "ERR-2", what="after the refused requests", replay=True)
    try:
        service.create_lora_training_client("no-such/base-model", rank=4, seed=0).result(timeout=120)
    except ts.NotFoundError as exc:
        assert backend.base_model in str(exc), f"[ERR-4] NotFoundError must list the served models: {exc}"
    else:
        raise AssertionError("[ERR-4] an unknown base model was accepted")
