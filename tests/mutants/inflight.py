"""Mutants of the inflight-sampler statements (spec/13-inflight.md, INF).

Inflight samplers are built by the shared client layer (``tinker_std.client.inflight`` and
``TrainingClient.save_weights_and_get_sampling_client``) for every backend, so each mutant replaces
one of its functions (``mutants._mock.PatchingMock``): a provider shipping its own client, or a
server, with that bug.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tinker_std.client import inflight, training
from tinker_std.client.sampling import SamplingClient
from tinker_std.client.validation import validate_adam_params

from . import Mutant
from ._mock import PatchingMock, replace
from ._patch import replace_everywhere

__all__ = ["MUTANTS"]


class InflightBaseWeightsMock(PatchingMock):
    """INF-1: an inflight save publishes the base model's weights, not the adapter at its position."""

    name: ClassVar[str] = "mock-inflight-base-weights"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def save_weights_and_get_sampling_client(
                self: Any, name: Any = None, record_stability_info: bool = False, kind: str = "snapshot"
            ) -> Any:
                if kind != "inflight":
                    return original(self, name, record_stability_info, kind)

                async def run(backend: Any) -> Any:
                    spec = await backend.create_sampler(base_model=self.spec.base_model)
                    self._inflight.publish(SamplingClient(self.session, spec))
                    return inflight.InflightSamplingClient(self.session, self._inflight, spec, record_stability_info)

                return self._ordered(run)

            return save_weights_and_get_sampling_client

        replace(training.TrainingClient, "save_weights_and_get_sampling_client", make)


class InflightPinnedMock(PatchingMock):
    """INF-2: an inflight sampler keeps the weights it was created with (a snapshot in disguise)."""

    name: ClassVar[str] = "mock-inflight-pinned"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _serving(self: Any) -> Any:
                pinned = self.__dict__.get("_pinned")
                if pinned is None:
                    pinned = self.__dict__["_pinned"] = original(self)
                return pinned

            return _serving

        replace(inflight.InflightSamplingClient, "_serving", make)


class InflightFollowsOptimStepMock(PatchingMock):
    """INF-3: every ``optim_step`` republishes the inflight target (live weights), not only saves."""

    name: ClassVar[str] = "mock-inflight-follows-optim-step"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def optim_step(self: Any, optim_params: Any = None, *, adam_params: Any = None) -> Any:
                params = validate_adam_params(optim_params if adam_params is None else adam_params)

                async def run(backend: Any) -> Any:
                    out = await backend.optim_step(self.model_id, params)
                    if self._inflight.version:
                        spec = await backend.create_sampler(model_id=self.model_id)
                        self._inflight.publish(SamplingClient(self.session, spec))
                    return out

                return self._ordered(run)

            return optim_step

        replace(training.TrainingClient, "optim_step", make)


class SnapshotIsInflightMock(PatchingMock):
    """INF-4: a snapshot save returns an inflight sampler, so later inflight saves move it."""

    name: ClassVar[str] = "mock-snapshot-is-inflight"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def save_weights_and_get_sampling_client(
                self: Any, name: Any = None, record_stability_info: bool = False, kind: str = "snapshot"
            ) -> Any:
                return original(self, name, record_stability_info, "inflight" if kind == "snapshot" else kind)

            return save_weights_and_get_sampling_client

        replace(training.TrainingClient, "save_weights_and_get_sampling_client", make)


class SharedInflightTargetMock(PatchingMock):
    """INF-5: one inflight target per session, shared by every training client."""

    name: ClassVar[str] = "mock-shared-inflight-target"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def __init__(self: Any, session: Any, spec: Any) -> None:
                original(self, session, spec)
                shared = session.__dict__.setdefault("_mutant_inflight", inflight.InflightTarget())
                self._inflight = shared

            return __init__

        replace(training.TrainingClient, "__init__", make)


class UnknownKindIsSnapshotMock(PatchingMock):
    """INF-6: a ``kind`` that is not a ``SamplingClientKind`` is read as ``"snapshot"``."""

    name: ClassVar[str] = "mock-unknown-kind-is-snapshot"

    @classmethod
    def patch(cls) -> None:
        original = inflight.check_sampler_kind
        if getattr(original, "__mutant__", False):
            return

        def check_sampler_kind(kind: Any) -> str:
            return "inflight" if kind == "inflight" else "snapshot"

        check_sampler_kind.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, check_sampler_kind)


class InflightHandleMock(PatchingMock):
    """INF-7: an inflight sampler hands out the handle of the snapshot it was created with."""

    name: ClassVar[str] = "mock-inflight-handle"

    @classmethod
    def patch(cls) -> None:
        def make_handle(original: Any) -> Any:
            def get_sampler_handle(self: Any) -> str:
                return SamplingClient.get_sampler_handle(self)

            return get_sampler_handle

        def make_reduce(original: Any) -> Any:
            def __reduce__(self: Any) -> Any:
                return SamplingClient.__reduce__(self)

            return __reduce__

        replace(inflight.InflightSamplingClient, "get_sampler_handle", make_handle)
        replace(inflight.InflightSamplingClient, "__reduce__", make_reduce)


def _m(cls: type, statement: str, test: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.inflight:{cls.__name__}",
        statement=statement,
        selection=(f"tinker_std.conformance.test_inflight::{test}",),
        also=frozenset(also),
        slow=slow,
    )


FOLLOW = "test_inflight_samplers_follow_inflight_saves"
ALONE = "test_inflight_saves_leave_snapshots_and_other_models_alone"

MUTANTS = [
    _m(InflightBaseWeightsMock, "INF-1", FOLLOW, also=("INF-2", "INF-3")),
    _m(InflightPinnedMock, "INF-2", FOLLOW, also=("INF-1",)),
    _m(InflightFollowsOptimStepMock, "INF-3", FOLLOW),
    # the default tier runs the three that define which weights are served; the rest run in the slow tier
    _m(SnapshotIsInflightMock, "INF-4", ALONE, slow=True),
    _m(SharedInflightTargetMock, "INF-5", ALONE, slow=True),
    _m(UnknownKindIsSnapshotMock, "INF-6", "test_an_unknown_sampler_kind_is_refused", slow=True),
    _m(InflightHandleMock, "INF-7", "test_an_inflight_sampler_has_no_handle", slow=True),
]
