"""``ServiceClient``: the entry point; picks a backend by name and creates clients (spec BE, ORD)."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from ..backend import Backend
from ..capabilities import Capabilities
from ..errors import BadRequestError, Unsupported
from ..futures import APIFuture
from ..limits import DEFAULT_LIMITS, Limits
from ..registry import create_backend
from ..stability import StabilityRecords
from ..types import AdamOptimizerConfig, GetServerCapabilitiesResponse, LoraConfig, ParsedCheckpointTinkerPath
from .backcompat import BackcompatClientFuture, BackcompatSamplingClientFuture
from .checkpoint_notes import check_user_metadata, local_store
from .loss_handle import LossHandle
from .rest import RestClient
from .sampling import SamplingClient, create_sampling_client
from .session import DEFAULT_MAX_CHUNK_DATUMS, BackendSession
from .training import TrainingClient
from .validation import validate_checkpoint_path

__all__ = ["ServiceClient", "DEFAULT_MAX_CHUNK_DATUMS"]


def _bad_request(exc: ValidationError, prefix: str = "") -> BadRequestError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or prefix
    return BadRequestError(f"{prefix}{field}" if prefix and field != prefix else field, first["msg"])


class BackcompatTrainingClientFuture(BackcompatClientFuture[TrainingClient]):
    """What ``create_lora_training_client`` and ``create_training_client_from_state*`` return: a
    future of the ``TrainingClient``, usable (deprecated) as the client itself
    (``client/backcompat.py``)."""


class ServiceClient:
    """Connects to one backend. ``backend`` is a registered name (``"mock"``), a ``module:Class``
    string, a Backend class or instance, or ``None`` for the default of
    ``registry.default_backend_name`` (BE-8): ``$TINKER_STD_BACKEND``, else ``torch`` when
    transformers and peft are installed, else ``mock``. Other keyword options go to the backend's
    constructor (e.g. ``checkpoint_dir``).

    The backend runs on a background event loop of this client's ``session`` (``BackendSession``,
    shared with every training and sampling client it creates); ``close()`` (or leaving a ``with``
    block) stops it.
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
        self.session = BackendSession(create_backend(backend, backend_options), max_chunk_datums, limits)
        # A script that never calls close() still shuts its backend down before the interpreter
        # finalises: otherwise torch work on the daemon loop thread can abort the process at exit.
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def capabilities(self) -> Capabilities:
        return self.session.capabilities

    @property
    def backend_name(self) -> str:
        return self.session.backend_name

    @property
    def backend(self) -> Backend:
        return self.session.backend

    @property
    def max_chunk_datums(self) -> int:
        return self.session.max_chunk_datums

    @property
    def limits(self) -> Limits:
        """The request limits checked before anything is queued (LIM-1..LIM-3)."""
        return self.session.limits

    @property
    def stability_records(self) -> StabilityRecords:
        """The samples recorded with ``record_stability_info=True`` (SDK-3; the session's)."""
        return self.session.stability_records

    def close(self) -> None:
        """Close the backend and stop the event loop."""
        self.session.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server information -----------------------------------------------------------------

    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return self.session.submit(lambda b: b.get_server_capabilities()).result()

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        return await self.session.submit(lambda b: b.get_server_capabilities())

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
    ) -> BackcompatTrainingClientFuture:
        """A new LoRA training client on ``base_model`` (LORA-1..LORA-5); AdamW is the only optimizer (OPT-9).
        ``user_metadata`` is kept on the training run (CKPT-13)."""
        check_user_metadata(self.session, user_metadata)
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
            return self._noted(
                TrainingClient(self.session, await backend.create_model(base_model, lora)), user_metadata
            )

        return BackcompatTrainingClientFuture(self.session.submit(run))

    def create_training_client_from_state(
        self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None
    ) -> BackcompatTrainingClientFuture:
        """A new training client with the weights at ``path`` and a fresh optimizer (CKPT-4);
        ``user_metadata`` is kept on its new training run (CKPT-13)."""
        check_user_metadata(self.session, user_metadata)
        return self._load(validate_checkpoint_path(path), base_model, with_optimizer=False, user_metadata=user_metadata)

    def _noted(self, client: TrainingClient, user_metadata: dict[str, str] | None) -> TrainingClient:
        store = local_store(self.session)
        if store is not None and user_metadata is not None:
            store.write_run_metadata(client.model_id, user_metadata)
        return client

    def _load(
        self,
        path: ParsedCheckpointTinkerPath,
        base_model: str | None,
        with_optimizer: bool,
        user_metadata: dict[str, str] | None = None,
    ) -> BackcompatTrainingClientFuture:
        async def run(backend: Backend) -> TrainingClient:
            spec = await backend.load_model(path, with_optimizer=with_optimizer)
            if base_model is not None and spec.base_model != base_model:
                await backend.release_model(spec.model_id)
                raise BadRequestError(
                    "base_model", f"{path.tinker_path} was trained on {spec.base_model!r}, not {base_model!r}"
                )
            return self._noted(TrainingClient(self.session, spec), user_metadata)

        return BackcompatTrainingClientFuture(self.session.submit(run))

    def create_training_client_from_state_with_optimizer(
        self, path: str, base_model: str | None = None, user_metadata: dict[str, str] | None = None
    ) -> BackcompatTrainingClientFuture:
        """A new training client with the weights and AdamW state saved at ``path`` (CKPT-5);
        ``user_metadata``: CKPT-13."""
        check_user_metadata(self.session, user_metadata)
        parsed = validate_checkpoint_path(path)
        if parsed.checkpoint_type != "training":
            raise BadRequestError("path", f"{path} holds no optimizer state; use a tinker://<run>/weights/<name> path")
        return self._load(parsed, base_model, with_optimizer=True, user_metadata=user_metadata)

    # -- sampling clients -------------------------------------------------------------------

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None, record_stability_info: bool = False
    ) -> BackcompatSamplingClientFuture:
        """A sampler over saved weights (``model_path``) or the plain ``base_model`` (SMP-15;
        ``sampling.create_sampling_client``); ``record_stability_info``: SDK-3."""
        return BackcompatSamplingClientFuture(
            create_sampling_client(self.session, model_path, base_model, record_stability_info)
        )

    def create_custom_loss(self, fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> APIFuture[LossHandle]:
        """The SDK's ``create_custom_loss`` (CLG-6): ``fn(logprobs, *inputs) -> (loss, metrics)``
        traced with ``torch.fx`` and validated by the server's own allow-list (CLG-1) now, so a
        bad ``fn`` or ``input_ranks`` is a ``BadRequestError`` naming it before anything is kept.
        The future's ``LossHandle`` carries a ``loss_id`` of this session: ``forward_backward_custom``
        runs it as the validated graph (one pass where the backend has the seam, CLG-4), as do
        ``forward``/``forward_backward`` with ``loss_fn="custom"`` and ``{"loss_id": ...}``."""
        from ..custom_loss.trace import trace_loss

        graph, module = trace_loss(fn, input_ranks)
        losses = self.session.custom_losses
        loss_id = losses.add(graph)
        handle = LossHandle(
            name=graph.name, inputs=graph.inputs, session_id=losses.session_id, graph=module, loss_id=loss_id
        )
        done: concurrent.futures.Future[LossHandle] = concurrent.futures.Future()
        done.set_result(handle)
        return APIFuture(done)

    # -- checkpoint management --------------------------------------------------------------

    def create_rest_client(self) -> RestClient:
        """Checkpoint management over the backend's checkpoint store (capability
        ``checkpoint_management``, CKPT-11); starts the backend first where it makes its store
        on starting (the ``tinker`` backend), so it may raise what starting raises."""
        if not self.capabilities.supports("checkpoint_management"):
            raise Unsupported("checkpoint_management", self.backend_name)
        if getattr(self.backend, "checkpoint_store", None) is None:  # made on starting (tinker: connecting)
            self.session.start().result()
        store = getattr(self.backend, "checkpoint_store", None)
        if store is None:
            raise Unsupported("checkpoint_management", self.backend_name)
        return RestClient(store, self.session.runtime)

    # -- async twins --------------------------------------------------------------------------

    async def create_lora_training_client_async(self, base_model: str, **kwargs: Any) -> TrainingClient:
        return await self.create_lora_training_client(base_model, **kwargs)

    async def create_training_client_from_state_async(self, path: str, **kwargs: Any) -> TrainingClient:
        return await self.create_training_client_from_state(path, **kwargs)

    async def create_training_client_from_state_with_optimizer_async(self, path: str, **kwargs: Any) -> TrainingClient:
        return await self.create_training_client_from_state_with_optimizer(path, **kwargs)

    async def create_sampling_client_async(
        self, model_path: str | None = None, base_model: str | None = None, record_stability_info: bool = False
    ) -> SamplingClient:
        return await self.create_sampling_client(
            model_path=model_path, base_model=base_model, record_stability_info=record_stability_info
        )


def _close_at_exit(ref: weakref.ref[ServiceClient]) -> None:
    service = ref()
    if service is not None:
        with contextlib.suppress(Exception):
            service.close()
