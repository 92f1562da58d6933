"""Mutants of the ordering and futures statements (spec/05-ordering.md, ORD).

Ordering is mostly the shared client layer's job, so most of these replace one client-layer
function (``mutants._mock.PatchingMock``); the rest break the mock backend itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import tinker_std as ts
from tinker_std.backends.mock import MockBackend
from tinker_std.client import training as training_module
from tinker_std.client.ordering import RequestLane
from tinker_std.futures import APIFuture
from tinker_std.types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse, ParsedCheckpointTinkerPath

from . import Mutant
from ._mock import PatchingMock, params, replace

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_ordering::"


class BlockingCallsMock(PatchingMock):
    """ORD-1: every training call waits for its request to finish before it returns."""

    name: ClassVar[str] = "mock-blocking-calls"

    @classmethod
    def patch(cls) -> None:
        def make(original: Callable[..., APIFuture[Any]]) -> Callable[..., APIFuture[Any]]:
            def _ordered(self: ts.TrainingClient, operation: Any) -> APIFuture[Any]:
                future = original(self, operation)
                future.future().exception()  # wait, whatever the outcome
                return future

            return _ordered

        replace(ts.TrainingClient, "_ordered", make)


class DeferredStepMock(MockBackend):
    """ORD-2: ``optim_step`` returns at once and the update lands only when the next gradient
    arrives, so a ``forward`` right after a step still sees the weights from before it."""

    name: ClassVar[str] = "mock-deferred-step"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._deferred: dict[str, AdamParams] = {}

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        self._deferred[model_id] = params
        return OptimStepResponse(metrics={"step:max": 0.0})

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if backward and model_id in self._deferred:
            await super().optim_step(model_id, self._deferred.pop(model_id))
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)


class ShuffledLaneMock(PatchingMock):
    """ORD-3: requests of one client run one at a time but not in submission order: a request
    waits a little before it runs, later requests of a burst less than earlier ones."""

    name: ClassVar[str] = "mock-shuffled-lane"

    @classmethod
    def patch(cls) -> None:
        locks: dict[int, asyncio.Lock] = {}

        def make(original: Any) -> Any:
            async def run(self: RequestLane, ticket: int, operation: Callable[[], Awaitable[Any]]) -> Any:
                await asyncio.sleep(0.01 * (1 + (-ticket) % 4))
                async with locks.setdefault(id(self), asyncio.Lock()):
                    return await operation()

            return run

        replace(RequestLane, "run", make)


class FailedSaveClearsGradientMock(MockBackend):
    """ORD-4: a save that fails (``ConflictError``) has already cleared the accumulated gradient."""

    name: ClassVar[str] = "mock-failed-save-clears-gradient"

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        try:
            await super().save_state(model_id, path, overwrite)
        except ts.ConflictError:
            for p in params(self, model_id).values():
                p.grad = None
            raise


class LateValidationMock(PatchingMock):
    """ORD-5: ``forward`` and ``forward_backward`` report validation errors through the future
    instead of raising them from the call."""

    name: ClassVar[str] = "mock-late-validation"

    @classmethod
    def patch(cls) -> None:
        def make(original: Callable[..., APIFuture[Any]]) -> Callable[..., APIFuture[Any]]:
            def call(self: ts.TrainingClient, *args: Any, **kwargs: Any) -> APIFuture[Any]:
                try:
                    return original(self, *args, **kwargs)
                except ts.TinkerError as exc:
                    error = exc

                    async def fail(_: Any) -> Any:
                        raise error

                    return self.session.submit(fail)

            return call

        replace(ts.TrainingClient, "forward", make)
        replace(ts.TrainingClient, "forward_backward", make)


class CancellingTimeoutMock(PatchingMock):
    """ORD-6: ``result(timeout)`` cancels the request when the timeout expires."""

    name: ClassVar[str] = "mock-cancelling-timeout"

    @classmethod
    def patch(cls) -> None:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def result(self: APIFuture[Any], timeout: float | None = None) -> Any:
                try:
                    return original(self, timeout)
                except TimeoutError:
                    self.future().cancel()
                    raise

            return result

        replace(APIFuture, "result", make)


class SingleAwaitTwinsMock(PatchingMock):
    """ORD-7: ``forward_backward_async`` resolves to the result, not to the future (no double await)."""

    name: ClassVar[str] = "mock-single-await-twins"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            async def forward_backward_async(self: ts.TrainingClient, *args: Any, **kwargs: Any) -> Any:
                return await self.forward_backward(*args, **kwargs)

            return forward_backward_async

        replace(ts.TrainingClient, "forward_backward_async", make)


class FutureOfClientMock(PatchingMock):
    """ORD-8: ``create_lora_training_client_async`` resolves to a future of the client."""

    name: ClassVar[str] = "mock-future-of-client"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            async def create_lora_training_client_async(self: ts.ServiceClient, base_model: str, **kw: Any) -> Any:
                return self.create_lora_training_client(base_model, **kw)

            return create_lora_training_client_async

        replace(ts.ServiceClient, "create_lora_training_client_async", make)


class FutureOfSampleMock(PatchingMock):
    """ORD-9: ``sample_async`` resolves to a future of the response instead of the response."""

    name: ClassVar[str] = "mock-future-of-sample"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            async def sample_async(self: ts.SamplingClient, *args: Any, **kwargs: Any) -> Any:
                return self.sample(*args, **kwargs)

            return sample_async

        replace(ts.SamplingClient, "sample_async", make)


class UnguardedResultMock(PatchingMock):
    """ORD-10: ``result()`` does not check the thread, so on the client's own loop it returns (or,
    for a pending request, deadlocks) instead of raising ``RuntimeError``."""

    name: ClassVar[str] = "mock-unguarded-result"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def result(self: APIFuture[Any], timeout: float | None = None) -> Any:
                return self.future().result(timeout)

            return result

        replace(APIFuture, "result", make)


class SplitCustomLossMock(PatchingMock):
    """ORD-11: the two phases of ``forward_backward_custom`` each take their own position when they
    start, so requests submitted right after the call run between them."""

    name: ClassVar[str] = "mock-split-custom-loss"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def forward_backward_custom(self: ts.TrainingClient, data: list[Datum], loss_fn: Any) -> Any:
                svc = self.session
                datums = training_module.validate_custom_loss_data(data, self.spec, svc.capabilities, svc.backend_name)

                async def run_ce(chunk: list[Datum], backward: bool) -> ForwardBackwardOutput:
                    phase = self._ordered(lambda b: self._chunked(b, chunk, "cross_entropy", {}, backward))
                    return await phase

                async def run(_: Any) -> ForwardBackwardOutput:
                    return await training_module.run_custom_loss(datums, loss_fn, run_ce)

                return svc.submit(run)

            return forward_backward_custom

        replace(ts.TrainingClient, "forward_backward_custom", make)


class LiveSamplerMock(MockBackend):
    """ORD-13 (and SMP-14): ``save_weights_and_get_sampling_client`` serves the live adapter, not a
    snapshot of the weights at its position."""

    name: ClassVar[str] = "mock-live-sampler"

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> Any:
        spec = await super().create_sampler(base_model=base_model, model_path=model_path, model_id=model_id)
        if model_id is not None:
            sampler = self._samplers[spec.sampler_id]
            self._samplers[spec.sampler_id] = dataclasses.replace(sampler, adapter=self._model(model_id).adapter)
        return spec


def _m(cls: type, statement: str, *tests: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.ordering:{cls.__name__}",
        statement=statement,
        selection=tuple(T + t for t in tests),
        also=frozenset(also),
        slow=slow,
    )


MUTANTS = [
    _m(BlockingCallsMock, "ORD-1", "test_calls_return_at_once", slow=True),
    _m(DeferredStepMock, "ORD-2", "test_each_request_sees_the_earlier_ones_and_no_later_one"),
    _m(ShuffledLaneMock, "ORD-3", "test_pipelined_submission_equals_sequential", also=("ORD-2",)),
    _m(FailedSaveClearsGradientMock, "ORD-4", "test_a_failed_request_changes_nothing_and_blocks_nothing", slow=True),
    _m(LateValidationMock, "ORD-5", "test_validation_errors_come_from_the_call"),
    _m(CancellingTimeoutMock, "ORD-6", "test_futures_block_time_out_and_await", slow=True),
    _m(SingleAwaitTwinsMock, "ORD-7", "test_async_twins"),
    _m(FutureOfClientMock, "ORD-8", "test_async_twins", slow=True),
    _m(FutureOfSampleMock, "ORD-9", "test_async_twins", slow=True),
    _m(UnguardedResultMock, "ORD-10", "test_result_on_the_clients_own_loop_raises", slow=True),
    _m(SplitCustomLossMock, "ORD-11", "test_a_custom_loss_holds_one_position"),
    _m(LiveSamplerMock, "ORD-13", "test_a_snapshot_sampler_captures_its_position", also=("SMP-14",)),
]
