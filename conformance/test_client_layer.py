"""What the shared client layer promises every backend (spec BE-2..BE-5, ERR-5).

These run an instrumented subclass of the mock backend, so they check the client layer itself; the
signature check of BE-2 runs on the backend under test.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

import tinker_std as ts
from tinker_std.backends.mock import MockBackend
from tinker_std.conformance.helpers import ADAM, probe_batch, sequence_datum
from tinker_std.conformance.plugin import ConformanceBackend

BOOM_TOKEN = 201  # a datum starting with this token makes the faulty backend raise


class RecordingBackend(MockBackend):
    """The mock backend, recording calls and the concurrency of calls per model."""

    name: ClassVar[str] = "mock-recording"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.active: dict[str, int] = {}
        self.overlaps: list[str] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.configs: list[tuple[str, dict[str, float]]] = []

    async def _enter(self, model_id: str, kind: str, tag: Any) -> None:
        if self.active.get(model_id):
            self.overlaps.append(f"{kind} on {model_id} while another call runs")
        self.active[model_id] = self.active.get(model_id, 0) + 1
        self.calls.append((model_id, kind, tag))
        await asyncio.sleep(0.002)  # give a broken client layer the chance to overlap calls

    def _leave(self, model_id: str) -> None:
        self.active[model_id] -= 1

    async def forward_backward(
        self, model_id: str, data: list[ts.Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ts.ForwardBackwardOutput:
        await self._enter(model_id, "fb" if backward else "forward", data[0].model_input.to_ints()[0])
        self.configs.append((loss_fn, dict(loss_fn_config)))
        try:
            if data[0].model_input.to_ints()[0] == BOOM_TOKEN:
                raise RuntimeError("injected backend failure")
            if data[0].model_input.to_ints()[0] == BOOM_TOKEN + 1:
                raise ts.NotFoundError("injected typed failure")
            return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        finally:
            self._leave(model_id)

    async def optim_step(self, model_id: str, params: ts.AdamParams) -> ts.OptimStepResponse:
        await self._enter(model_id, "step", params.learning_rate)
        try:
            return await super().optim_step(model_id, params)
        finally:
            self._leave(model_id)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(RecordingBackend, checkpoint_dir=str(Path(tmp_path_factory.mktemp("recording"))))
    yield service
    service.close()


def _backend(service: ts.ServiceClient) -> RecordingBackend:
    backend = service.backend
    assert isinstance(backend, RecordingBackend)
    return backend


@pytest.mark.spec("BE-3", "ORD-2", "ORD-14")
def test_the_backend_sees_one_call_per_model_at_a_time_in_order(recording: ts.ServiceClient) -> None:
    backend = _backend(recording)
    clients = [recording.create_lora_training_client(base_model="mock/tiny", rank=4, seed=i).result() for i in range(3)]
    futures: list[ts.APIFuture[object]] = []
    expected: dict[str, list[tuple[str, Any]]] = {tc.model_id: [] for tc in clients}
    for k in range(4):
        for tc in clients:
            datum = sequence_datum([10 + k, 20, 30, 40])
            futures.append(tc.forward_backward([datum], "cross_entropy"))
            futures.append(tc.optim_step(ts.AdamParams(learning_rate=1e-3 * (k + 1))))
            futures.append(tc.forward([datum]))
            expected[tc.model_id] += [("fb", 10 + k), ("step", 1e-3 * (k + 1)), ("forward", 10 + k)]
    for f in futures:
        f.result()
    assert not backend.overlaps, f"[BE-3] overlapping calls for one model: {backend.overlaps[:3]}"
    for model_id, want in expected.items():
        got = [(kind, tag) for mid, kind, tag in backend.calls if mid == model_id]
        assert got == want, f"[BE-3] calls for {model_id} arrived as {got}, submitted as {want}"


@pytest.mark.spec("BE-4", "LOSS-11")
def test_the_backend_receives_only_declared_config_keys(recording: ts.ServiceClient) -> None:
    backend = _backend(recording)
    tc = recording.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "advantages": [1.0, -1.0, 0.5], "logprobs": [-1.0] * 3},
    )
    declared = {
        "importance_sampling": {},
        "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
        "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
        "dro": {"beta": 0.05},
        "gspo": {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0004},
    }
    for loss_fn, defaults in declared.items():
        for given in (None, {k: 0.5 for k in list(defaults)[:1]}):
            backend.configs.clear()
            tc.forward([datum], loss_fn, given).result()
            (name, received), *_ = backend.configs
            assert name == loss_fn
            assert set(received) <= set(defaults), f"[BE-4] {loss_fn} received keys {sorted(received)}"
            for key, value in received.items():
                want = (given or {}).get(key, defaults[key])
                assert value == want, f"[BE-4] {loss_fn}.{key} = {value}, expected {want}"


@pytest.mark.spec("BE-5", "ERR-5", "ORD-4")
def test_backend_exceptions_become_typed_errors(recording: ts.ServiceClient) -> None:
    tc = recording.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    probe = probe_batch(258)
    before = tc.forward(probe).result()
    failing = tc.forward_backward([sequence_datum([BOOM_TOKEN, 1, 2])], "cross_entropy")
    typed = tc.forward([sequence_datum([BOOM_TOKEN + 1, 1, 2])])
    after = tc.forward(probe)
    with pytest.raises(ts.RequestFailedError) as err:
        failing.result()
    assert err.value.category == "server", f"[BE-5] [ERR-5] category {err.value.category!r}, expected 'server'"
    cause = err.value.__cause__
    assert isinstance(cause, RuntimeError), f"[ERR-5] the original exception must be chained as __cause__: {cause!r}"
    try:
        typed.result()
    except ts.TinkerError as exc:
        assert type(exc) is ts.NotFoundError, f"[BE-5] a backend's NotFoundError reached the caller as {exc!r}"
    else:
        raise AssertionError("[BE-5] a request whose backend call raised NotFoundError succeeded")
    assert after.result().metrics == before.metrics, "[ERR-5] the failed request changed state"
    tc.forward_backward(probe, "cross_entropy").result()
    tc.optim_step(ADAM).result()


@pytest.mark.spec("BE-2")
def test_the_backend_implements_the_contract_signatures(conformance_backend: ConformanceBackend) -> None:
    cls = conformance_backend.cls
    for name in [*sorted(getattr(ts.Backend, "__abstractmethods__", ())), "start", "close"]:
        base, impl = getattr(ts.Backend, name), getattr(cls, name)
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(base), f"[BE-2] {name}: async-ness"
        want = [p.name for p in inspect.signature(base).parameters.values()]
        got = [p.name for p in inspect.signature(impl).parameters.values()]
        assert got == want, f"[BE-2] {cls.__name__}.{name}{got} differs from Backend.{name}{want}"
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    assert not positional, f"[BE-2] __init__ takes keyword options only, not {positional}"
