"""Mutants of the checkpoint statements (spec/06-checkpoints.md, CKPT)."""

from __future__ import annotations

import tempfile
from typing import Any, ClassVar

import tinker_std as ts
from tinker_std.backends.mock import MockBackend
from tinker_std.types import LoraConfig, ParsedCheckpointTinkerPath

from . import Mutant
from ._mock import PatchingMock, replace

__all__ = ["MUTANTS"]

T = "tinker_std.conformance.test_checkpoints::"


class SamplerPathUnderWeightsMock(PatchingMock):
    """CKPT-1: ``save_weights_for_sampler`` answers with a ``weights`` path."""

    name: ClassVar[str] = "mock-sampler-path-under-weights"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def save_weights_for_sampler(self: ts.TrainingClient, name: str, *args: Any, **kwargs: Any) -> Any:
                future = original(self, name, *args, **kwargs)

                async def run(_: Any) -> Any:
                    response = await future
                    return response.model_copy(update={"path": response.path.replace("/sampler_weights/", "/weights/")})

                return self.session.submit(run)

            return save_weights_for_sampler

        replace(ts.TrainingClient, "save_weights_for_sampler", make)


class LiveCheckpointMock(MockBackend):
    """CKPT-2: a checkpoint follows its saving client: loading it while that client lives gives
    the client's current weights, not the saved ones (as if the save kept a reference)."""

    name: ClassVar[str] = "mock-live-checkpoint"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._saved_by: dict[str, str] = {}

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await super().save_state(model_id, path, overwrite)
        self._saved_by[path.tinker_path] = model_id

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await super().save_weights_for_sampler(model_id, path, overwrite)
        self._saved_by[path.tinker_path] = model_id

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        spec = await super().load_model(path, with_optimizer)
        source = self._models.get(self._saved_by.get(path.tinker_path, ""))
        if source is not None:
            for name, p in self._model(spec.model_id).adapter.params.items():
                p.data.copy_(source.adapter.params[name].data)
        return spec


class AlwaysOverwriteMock(MockBackend):
    """CKPT-3: saving to an existing path replaces it even without ``overwrite=True``."""

    name: ClassVar[str] = "mock-always-overwrite"

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await super().save_state(model_id, path, True)

    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await super().save_weights_for_sampler(model_id, path, True)


class KeepsMomentsMock(MockBackend):
    """CKPT-4: ``create_training_client_from_state`` restores the AdamW moments and step too."""

    name: ClassVar[str] = "mock-keeps-moments"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        return await super().load_model(path, with_optimizer or path.checkpoint_type == "training")


class ForgetfulOptimizerMock(MockBackend):
    """CKPT-5: loading with the optimizer restores the weights but starts a fresh AdamW."""

    name: ClassVar[str] = "mock-forgetful-optimizer"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        return await super().load_model(path, with_optimizer=with_optimizer and path.checkpoint_type != "training")


class DefaultLoraOnLoadMock(MockBackend):
    """CKPT-6: a loaded client reports the default ``LoraConfig`` (rank 32), not the checkpoint's."""

    name: ClassVar[str] = "mock-default-lora-on-load"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        spec = await super().load_model(path, with_optimizer)
        changed = spec.model_copy(update={"lora": LoraConfig(rank=32)})
        self._model(spec.model_id).spec = changed
        return changed


class PrivateCheckpointDirMock(MockBackend):
    """CKPT-7: the ``checkpoint_dir`` option is accepted but each backend instance stores its
    checkpoints in a private temporary folder, so another client cannot load them."""

    name: ClassVar[str] = "mock-private-checkpoint-dir"

    def __init__(self, *, checkpoint_dir: Any = None) -> None:
        super().__init__(checkpoint_dir=tempfile.mkdtemp(prefix="mutant-ckpt-"))


class MissingIsBadRequestMock(MockBackend):
    """CKPT-8: a well-formed path with no checkpoint behind it is a ``BadRequestError``, not
    ``NotFoundError``."""

    name: ClassVar[str] = "mock-missing-is-bad-request"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        try:
            return await super().load_model(path, with_optimizer)
        except ts.NotFoundError as exc:
            raise ts.BadRequestError("path", str(exc)) from None

    async def create_sampler(self, **kwargs: Any) -> Any:
        try:
            return await super().create_sampler(**kwargs)
        except ts.NotFoundError as exc:
            raise ts.BadRequestError("model_path", str(exc)) from None


class LoadFollowsOverwriteMock(MockBackend):
    """CKPT-9: clients loaded from a path share their weights with it: an overwrite of the path
    changes them in place."""

    name: ClassVar[str] = "mock-load-follows-overwrite"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._loaded_from: dict[str, list[str]] = {}

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        spec = await super().load_model(path, with_optimizer)
        self._loaded_from.setdefault(path.tinker_path, []).append(spec.model_id)
        return spec

    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        await super().save_state(model_id, path, overwrite)
        source = self._model(model_id).adapter.params
        for loaded in self._loaded_from.get(path.tinker_path, []):
            if loaded in self._models and loaded != model_id:
                for name, p in self._model(loaded).adapter.params.items():
                    p.data.copy_(source[name].data)


class SavesIntoSourceRunMock(PatchingMock):
    """CKPT-10: a client created from a checkpoint saves under the source checkpoint's run id."""

    name: ClassVar[str] = "mock-saves-into-source-run"

    @classmethod
    def patch(cls) -> None:
        def make_load(original: Any) -> Any:
            def _load(self: ts.ServiceClient, path: ParsedCheckpointTinkerPath, *args: Any, **kwargs: Any) -> Any:
                future = original(self, path, *args, **kwargs)

                async def run(_: Any) -> Any:
                    client = await future
                    client._source_run = path.training_run_id
                    return client

                return self.session.submit(run)

            return _load

        def make_path(original: Any) -> Any:
            def _checkpoint_path(self: ts.TrainingClient, kind: str, name: str) -> ParsedCheckpointTinkerPath:
                own = original(self, kind, name)
                run = getattr(self, "_source_run", own.training_run_id)
                return ParsedCheckpointTinkerPath.build(run, own.checkpoint_type, name)

            return _checkpoint_path

        replace(ts.ServiceClient, "_load", make_load)
        replace(ts.TrainingClient, "_checkpoint_path", make_path)


class SnapshotWritesCheckpointMock(PatchingMock):
    """CKPT-12: ``save_weights_and_get_sampling_client(name)`` also writes a ``sampler_weights``
    checkpoint under ``name``."""

    name: ClassVar[str] = "mock-snapshot-writes-checkpoint"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def save_weights_and_get_sampling_client(self: ts.TrainingClient, name: str | None = None) -> Any:
                if name is not None:
                    self.save_weights_for_sampler(name)
                return original(self, name)

            return save_weights_and_get_sampling_client

        replace(ts.TrainingClient, "save_weights_and_get_sampling_client", make)


class IgnoredTtlMock(PatchingMock):
    """CKPT-13: ``ttl_seconds`` is accepted and ignored (spec 0.1's rule) instead of applied:
    both saves run as if it were ``None``."""

    name: ClassVar[str] = "mock-ignored-ttl"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def save(self: ts.TrainingClient, name: str, ttl_seconds: int | None = None, **kwargs: Any) -> Any:
                return original(self, name, None, **kwargs)

            return save

        replace(ts.TrainingClient, "save_state", make)
        replace(ts.TrainingClient, "save_weights_for_sampler", make)


def _m(cls: type, statement: str, *tests: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.checkpoints:{cls.__name__}",
        statement=statement,
        selection=tuple(t if t.startswith("tinker_std.") else T + t for t in tests),
        also=frozenset(also),
        slow=slow,
    )


MUTANTS = [
    _m(SamplerPathUnderWeightsMock, "CKPT-1", "test_checkpoint_paths", slow=True),
    _m(LiveCheckpointMock, "CKPT-2", "test_a_checkpoint_never_changes_after_it_is_written", also=("SMP-16",)),
    _m(AlwaysOverwriteMock, "CKPT-3", "test_overwrite_rules_and_immutability", slow=True),
    _m(KeepsMomentsMock, "CKPT-4", "test_loading_without_optimizer_starts_a_fresh_optimizer"),
    _m(ForgetfulOptimizerMock, "CKPT-5", "test_resuming_with_optimizer_reproduces_the_run", also=("OPT-8",)),
    _m(DefaultLoraOnLoadMock, "CKPT-6", "test_checkpoint_paths", slow=True),
    _m(PrivateCheckpointDirMock, "CKPT-7", "test_a_checkpoint_loads_in_a_new_service_client", slow=True),
    _m(MissingIsBadRequestMock, "CKPT-8", "test_load_errors", slow=True),
    _m(LoadFollowsOverwriteMock, "CKPT-9", "test_overwrite_rules_and_immutability"),
    _m(SavesIntoSourceRunMock, "CKPT-10", "test_checkpoint_paths", slow=True),
    _m(SnapshotWritesCheckpointMock, "CKPT-12", "test_a_snapshot_sampler_writes_no_checkpoint", slow=True),
    _m(IgnoredTtlMock, "CKPT-13", "test_ttl_and_user_metadata_are_applied_or_refused_by_name"),
]
