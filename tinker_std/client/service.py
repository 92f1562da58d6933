"""``ServiceClient``: the entry point; picks a backend by name and creates clients (spec BE, ORD)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from ..backend import Backend
from ..capabilities import Capabilities
from ..errors import BadRequestError, RequestFailedError, TinkerError, Unsupported
from ..futures import APIFuture
from ..limits import DEFAULT_LIMITS, Limits
from ..registry import create_backend
from ..types import AdamOptimizerConfig, GetServerCapabilitiesResponse, LoraConfig, ParsedCheckpointTinkerPath
from .rest import RestClient
from .runtime import EventLoopThread
from .sampling import SamplingClient
from .training import TrainingClient

__all__ = ["ServiceClient", "DEFAULT_MAX_CHUNK_DATUMS"]

T = TypeVar("T")

#: Datums per backend call when one forward/forward_backward is split (as in the tinker SDK).
DEFAULT_MAX_CHUNK_DATUMS = 1024


def _bad_request(exc: ValidationError, prefix: str = "") -> BadRequestError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or prefix
    return BadRequestError(f"{prefix}{field}" if prefix and field != prefix else field, first["msg"])


def _parse_path(path: Any, field: str = "path") -> ParsedCheckpointTinkerPath:
    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError as exc:
        raise BadRequestError(field, str(exc)) from None


class ServiceClient:
    """Connects to one backend. ``backend`` is a registered name (``"mock"``), a ``module:Class``
    string, a Backend class or instance, or ``None`` for ``$TINKER_STD_BACKEND`` (else ``mock``).
    Other keyword options go to the backend's constructor (e.g. ``checkpoint_dir``).

    The backend runs on a background event loop owned by this client; ``close()`` (or leaving a
    ``with`` block) stops it.
    """

    def __init__(
        self,
        backend: str | Backend | type[Backend] | None = None,
        *,
        max_chunk_datums: int = DEFAULT_MAX_CHUNK_DATUMS,
        limits: Limits = DEFAULT_LIMITS,
        **backend_options: Any,
    ) -> None:
        if max_chunk_datums < 1:
            raise BadRequestError("max_chunk_datums", "must be >= 1")
        if not isinstance(limits, Limits):
            raise BadRequestError("limits", f"must be tinker_std.Limits, got {type(limits).__name__}")
        self._backend = create_backend(backend, backend_options)
        self.max_chunk_datums = max_chunk_datums
        self.limits = limits  # LIM-1..LIM-3, checked before a request is queued
        self._runtime = EventLoopThread(name=f"tinker-std-{self._backend.name}")
        self._started: asyncio.Task[None] | None = None
        # A script that never calls close() still shuts its backend down before the interpreter
        # finalises: otherwise torch work on the daemon loop thread can abort the process at exit.
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return type(self._backend).capabilities

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def backend(self) -> Backend:
        return self._backend

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._backend.start())
        await asyncio.shield(self._started)

    def _submit(self, operation: Callable[[Backend], Awaitable[T]]) -> APIFuture[T]:
        """Run ``operation`` on the event loop; errors other than TinkerError become RequestFailedError."""

        async def run() -> T:
            await self._ensure_started()
            try:
                return await operation(self._backend)
            except TinkerError:
                raise
            except Exception as exc:
                raise RequestFailedError(f"{type(exc).__name__}: {exc}", category="server") from exc

        return self._runtime.submit(run())

    def _release_sampler(self, sampler_id: str) -> None:
        """Tell the backend, without waiting, that no ``SamplingClient`` of ``sampler_id`` is left
        (called by the client's finalizer, from any thread; a no-op once the service is closed)."""
        if self._started is not None and self._runtime.loop.is_running():
            self._runtime.loop.call_soon_threadsafe(self._start_release, sampler_id)

    def _start_release(self, sampler_id: str) -> None:
        task = self._runtime.loop.create_task(self._backend.release_sampler(sampler_id))
        task.add_done_callback(_ignore_result)

    def close(self) -> None:
        """Close the backend and stop the event loop."""
        if self._runtime.loop.is_running():
            if self._started is not None:
                self._runtime.submit(self._backend.close()).result(timeout=60)
            self._runtime.stop()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server information -----------------------------------------------------------------

    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return self._submit(lambda b: b.get_server_capabilities()).result()

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        return await self._submit(lambda b: b.get_server_capabilities())

    # -- training clients -------------------------------------------------------------------

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: AdamOptimizerConfig | None = None,
    ) -> APIFuture[TrainingClient]:
        """A new LoRA training client on ``base_model`` (LORA-1..LORA-5); AdamW is the only optimizer (OPT-9)."""
        if not isinstance(base_model, str) or not base_model:
            raise BadRequestError("base_model", "must be a non-empty model name")
        if optimizer is not None and not isinstance(optimizer, AdamOptimizerConfig):
            raise BadRequestError("optimizer", f"only AdamOptimizerConfig is supported, got {type(optimizer).__name__}")
        self.limits.check_rank(rank)
        try:
            lora = LoraConfig(
                rank=rank, seed=seed, train_mlp=train_mlp, train_attn=train_attn, train_unembed=train_unembed
            )
        except ValidationError as exc:
            raise _bad_request(exc) from None

        async def run(backend: Backend) -> TrainingClient:
            return TrainingClient(self, await backend.create_model(base_model, lora))

        return self._submit(run)

    def create_training_client_from_state(
        self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None
    ) -> APIFuture[TrainingClient]:
        """A new training client with the weights at ``path`` and a fresh optimizer (CKPT-4)."""
        return self._load(_parse_path(path), base_model, with_optimizer=False)

    def _load(
        self, path: ParsedCheckpointTinkerPath, base_model: str | None, with_optimizer: bool
    ) -> APIFuture[TrainingClient]:
        async def run(backend: Backend) -> TrainingClient:
            spec = await backend.load_model(path, with_optimizer=with_optimizer)
            if base_model is not None and spec.base_model != base_model:
                await backend.release_model(spec.model_id)
                raise BadRequestError(
                    "base_model", f"{path.tinker_path} was trained on {spec.base_model!r}, not {base_model!r}"
                )
            return TrainingClient(self, spec)

        return self._submit(run)

    def create_training_client_from_state_with_optimizer(
        self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None
    ) -> APIFuture[TrainingClient]:
        """A new training client with the weights and AdamW state saved at ``path`` (CKPT-5)."""
        parsed = _parse_path(path)
        if parsed.checkpoint_type != "training":
            raise BadRequestError("path", f"{path} holds no optimizer state; use a tinker://<run>/weights/<name> path")
        return self._load(parsed, base_model, with_optimizer=True)

    # -- sampling clients -------------------------------------------------------------------

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None
    ) -> APIFuture[SamplingClient]:
        """A sampler over saved weights (``model_path``) or the plain ``base_model``."""
        if (model_path is None) == (base_model is None):
            raise BadRequestError("model_path", "give exactly one of model_path and base_model")
        parsed = _parse_path(model_path, "model_path") if model_path is not None else None

        async def run(backend: Backend) -> SamplingClient:
            if parsed is not None:
                return SamplingClient(self, await backend.create_sampler(model_path=parsed))
            return SamplingClient(self, await backend.create_sampler(base_model=base_model))

        return self._submit(run)

    # -- checkpoint management --------------------------------------------------------------

    def create_rest_client(self) -> RestClient:
        """Checkpoint management over the backend's local checkpoint store (capability
        ``checkpoint_management``, CKPT-11)."""
        store = getattr(self._backend, "checkpoint_store", None)
        if not self.capabilities.supports("checkpoint_management") or store is None:
            raise Unsupported("checkpoint_management", self.backend_name)
        return RestClient(store, self._runtime)

    # -- async twins --------------------------------------------------------------------------

    async def create_lora_training_client_async(self, base_model: str, **kwargs: Any) -> TrainingClient:
        return await self.create_lora_training_client(base_model, **kwargs)

    async def create_training_client_from_state_async(self, path: str, **kwargs: Any) -> TrainingClient:
        return await self.create_training_client_from_state(path, **kwargs)

    async def create_training_client_from_state_with_optimizer_async(self, path: str, **kwargs: Any) -> TrainingClient:
        return await self.create_training_client_from_state_with_optimizer(path, **kwargs)

    async def create_sampling_client_async(
        self, model_path: str | None = None, base_model: str | None = None
    ) -> SamplingClient:
        return await self.create_sampling_client(model_path=model_path, base_model=base_model)


def _close_at_exit(ref: weakref.ref[ServiceClient]) -> None:
    service = ref()
    if service is not None:
        with contextlib.suppress(Exception):
            service.close()


def _ignore_result(task: asyncio.Task[None]) -> None:
    """Releasing is best effort: a failure frees nothing but must not be reported as unhandled."""
    if not task.cancelled():
        task.exception()
