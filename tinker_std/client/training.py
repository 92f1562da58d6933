"""``TrainingClient``: one LoRA training run (spec FB, OPT, ORD, CKPT)."""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..backend import AdapterState, Backend, ModelSpec, Tokenizer
from ..errors import BadRequestError, Unsupported
from ..futures import APIFuture
from ..stability import check_span_tiling, resolve_stable_reinforce
from ..types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetInfoResponse,
    ModelData,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
)
from .backcompat import BackcompatSamplingClientFuture
from .checkpoint_notes import check_ttl, check_user_metadata, expiry, local_store
from .chunking import merge_outputs, split_chunks
from .custom_loss import CustomLossFn, run_custom_loss
from .graph_loss import custom_loss_id, run_graph_loss
from .inflight import InflightSamplingClient, InflightTarget, check_sampler_kind
from .loss_handle import LossHandle, as_loss_fn, is_loss_handle
from .ordering import RequestLane
from .sampling import SamplingClient, create_sampling_client
from .session import BackendSession
from .validation import (
    validate_adam_params,
    validate_checkpoint_name,
    validate_custom_loss_data,
    validate_forward_backward,
)

__all__ = ["TrainingClient"]

if TYPE_CHECKING:
    from ..custom_loss import LossGraph
    from ..training_math import DatumLoss

T = TypeVar("T")


class TrainingClient:
    """A LoRA adapter being trained, with its own gradients and AdamW state.

    Every training call validates its request, reserves the next position in this client's order
    and returns an ``APIFuture`` at once. Requests take effect in call order whatever order their
    futures are awaited in (ORD-1); a failed request fails only its own future (ORD-4).
    """

    def __init__(self, session: BackendSession, spec: ModelSpec) -> None:
        self.session = session
        self.spec = spec
        self._lane = RequestLane()
        self._inflight = InflightTarget()  # what this client's inflight samplers serve (INF)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    # -- plumbing ---------------------------------------------------------------------------

    def _ordered(self, operation: Callable[[Backend], Awaitable[T]]) -> APIFuture[T]:
        ticket = self._lane.reserve()
        return self.session.submit(lambda backend: self._lane.run(ticket, lambda: operation(backend)))

    async def _chunked(
        self,
        backend: Backend,
        data: list[Datum],
        loss_fn: str,
        config: Mapping[str, float],
        backward: bool,
        datum_loss: DatumLoss | None = None,
    ) -> ForwardBackwardOutput:
        """One call, all or nothing (FB-14): with ``backward`` and several chunks, the gradient is
        snapshotted first and restored if any chunk fails; a backend that cannot snapshot gets
        the whole call as one ``forward_backward``. ``datum_loss``: each chunk goes through the
        backend's one-pass seam with it instead (``forward_backward_datum_loss``, CLG-4)."""
        chunks = split_chunks(data, self.session.max_chunk_datums)
        snapshot = None
        if backward and len(chunks) > 1:
            snapshot = await backend.gradient_snapshot(self.model_id)
            if snapshot is None:
                chunks = [data]
        try:
            outputs = [
                await (
                    backend.forward_backward(self.model_id, c, loss_fn, config, backward)
                    if datum_loss is None
                    else backend.forward_backward_datum_loss(self.model_id, c, datum_loss, backward)
                )
                for c in chunks
            ]
        except BaseException:
            if snapshot is not None:
                await backend.restore_gradient(self.model_id, snapshot)
            raise
        return merge_outputs(outputs, [len(c) for c in chunks])

    def _resolve_provenance(self, datums: list[Datum], loss_fn: str) -> list[Datum]:
        """LOSS-17: spans must tile their fields for every loss; ``stable_reinforce`` checks them
        against the recorded samples and reads the recorded logprobs (``tinker_std.stability``)."""
        if loss_fn == "stable_reinforce":
            records = self.session.stability_records
            return [resolve_stable_reinforce(i, d, records) for i, d in enumerate(datums)]
        for i, datum in enumerate(datums):
            check_span_tiling(i, datum)
        return datums

    def _checkpoint_path(self, kind: str, name: str) -> ParsedCheckpointTinkerPath:
        validate_checkpoint_name(name)
        return ParsedCheckpointTinkerPath.build(self.model_id, "training" if kind == "weights" else "sampler", name)

    # -- training ---------------------------------------------------------------------------

    def forward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: Mapping[str, float | str] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Score ``data`` without changing any state (FB-1); ``loss_fn="custom"`` with
        ``loss_fn_config={"loss_id": ...}``: a loss from ``ServiceClient.create_custom_loss`` (CLG-5)."""
        if loss_fn == "custom":
            return self.run_graph_loss(data, self._session_graph(loss_fn_config), backward=False)
        session = self.session
        session.limits.check_datums(len(data) if isinstance(data, list) else 0)  # before validating them all
        datums, config = validate_forward_backward(
            data, loss_fn, loss_fn_config, self.spec, session.capabilities, session.backend_name
        )
        datums = self._resolve_provenance(datums, loss_fn)
        return self._ordered(lambda b: self._chunked(b, datums, loss_fn, config, backward=False))

    def forward_backward(
        self, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float | str] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Score ``data`` and add the loss gradient to the accumulated gradient (FB-2..FB-4);
        ``loss_fn="custom"`` as in ``forward`` (CLG-4)."""
        if loss_fn == "custom":
            return self.run_graph_loss(data, self._session_graph(loss_fn_config), backward=True)
        session = self.session
        session.limits.check_datums(len(data) if isinstance(data, list) else 0)  # before validating them all
        datums, config = validate_forward_backward(
            data, loss_fn, loss_fn_config, self.spec, session.capabilities, session.backend_name
        )
        datums = self._resolve_provenance(datums, loss_fn)
        return self._ordered(lambda b: self._chunked(b, datums, loss_fn, config, backward=True))

    def forward_backward_custom(
        self, data: list[Datum], loss_fn: CustomLossFn | LossHandle, *, loss_type_input: str | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Accumulate the gradient of ``loss_fn(data, logprobs)`` via the surrogate trick (FB-9).

        ``loss_fn`` may be a ``LossHandle`` (``client/loss_handle.py``): run per datum on the
        client, or, with the ``loss_id`` of ``ServiceClient.create_custom_loss``, as that
        validated graph (``run_graph_loss``). ``loss_type_input`` is deprecated in the SDK:
        ``"logprobs"`` (what the loss always gets) warns, anything else is a ``BadRequestError``."""
        _check_loss_type_input(loss_type_input)
        if is_loss_handle(loss_fn) and getattr(loss_fn, "loss_id", None) is not None:
            handle: Any = loss_fn
            if handle.session_id != self.session.custom_losses.session_id:
                raise BadRequestError(
                    "loss_fn", f"loss {handle.name!r} was created in session {handle.session_id}, not this one"
                )
            return self.run_graph_loss(data, self.session.custom_losses.get(handle.loss_id, "loss_fn"), backward=True)
        session = self.session
        session.limits.check_datums(len(data) if isinstance(data, list) else 0)
        datums = validate_custom_loss_data(data, self.spec, session.capabilities, session.backend_name)
        fn: CustomLossFn = as_loss_fn(loss_fn, datums) if is_loss_handle(loss_fn) else loss_fn  # type: ignore[assignment]

        def run(backend: Backend) -> Awaitable[ForwardBackwardOutput]:
            def run_ce(chunk: list[Datum], backward: bool) -> Awaitable[ForwardBackwardOutput]:
                return self._chunked(backend, chunk, "cross_entropy", {}, backward)

            return run_custom_loss(datums, fn, run_ce)

        return self._ordered(run)

    def _session_graph(self, loss_fn_config: Mapping[str, Any] | None) -> LossGraph:
        return self.session.custom_losses.get(custom_loss_id(loss_fn_config), "loss_fn_config.loss_id")

    def run_graph_loss(
        self, data: list[Datum], graph: LossGraph, *, backward: bool
    ) -> APIFuture[ForwardBackwardOutput]:
        """A validated graph loss (``tinker_std.custom_loss``, CLG-1) as ``forward_backward``
        (``backward``) or ``forward``: one position of this client's order (ORD-11); one pass where
        the backend declares ``one_pass_datum_loss`` (CLG-4), else two (FB-11); without
        ``backward`` no gradient (CLG-5). The datums are checked first (CLG-3). The server runs
        uploaded losses through this too."""
        from ..custom_loss import check_graph_inputs

        session = self.session
        session.limits.check_datums(len(data) if isinstance(data, list) else 0)
        datums = validate_custom_loss_data(data, self.spec, session.capabilities, session.backend_name)
        check_graph_inputs(graph, datums)

        def run(backend: Backend) -> Awaitable[ForwardBackwardOutput]:
            def run_ce(chunk: list[Datum], ce_backward: bool) -> Awaitable[ForwardBackwardOutput]:
                return self._chunked(backend, chunk, "cross_entropy", {}, ce_backward)

            def run_datum_loss(chunk: list[Datum], loss: DatumLoss) -> Awaitable[ForwardBackwardOutput]:
                return self._chunked(backend, chunk, "custom", {}, backward, loss)

            return run_graph_loss(backend, datums, graph, backward, run_datum_loss, run_ce)

        return self._ordered(run)

    def optim_step(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """One AdamW step with the accumulated gradient, which it then clears (OPT, FB-5).

        ``adam_params`` is the tinker SDK's legacy keyword alias of ``optim_params``."""
        if optim_params is not None and adam_params is not None:
            raise BadRequestError("adam_params", "give optim_params or adam_params, not both")
        params = validate_adam_params(optim_params if adam_params is None else adam_params)
        return self._ordered(lambda b: b.optim_step(self.model_id, params))

    # -- checkpoints and samplers -----------------------------------------------------------

    def save_state(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[SaveWeightsResponse]:
        """Save adapter weights and optimizer state to ``tinker://<run>/weights/<name>`` (CKPT-1);
        ``ttl_seconds`` and ``user_metadata``: CKPT-13 (``checkpoint_notes``)."""
        path = self._checkpoint_path("weights", name)
        _check_overwrite(overwrite)
        check_ttl(self.session, ttl_seconds)
        check_user_metadata(self.session, user_metadata)

        async def run(backend: Backend) -> SaveWeightsResponse:
            await backend.save_state(self.model_id, path, overwrite)
            self._annotate(path, ttl_seconds, user_metadata)
            return SaveWeightsResponse(path=path.tinker_path, type="save_weights")

        return self._ordered(run)

    def save_weights_for_sampler(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Save adapter weights to ``tinker://<run>/sampler_weights/<name>`` (CKPT-2);
        ``ttl_seconds`` and ``user_metadata``: CKPT-13 (``checkpoint_notes``)."""
        path = self._checkpoint_path("sampler_weights", name)
        _check_overwrite(overwrite)
        check_ttl(self.session, ttl_seconds)
        check_user_metadata(self.session, user_metadata)

        async def run(backend: Backend) -> SaveWeightsForSamplerResponse:
            await backend.save_weights_for_sampler(self.model_id, path, overwrite)
            self._annotate(path, ttl_seconds, user_metadata)
            return SaveWeightsForSamplerResponse(path=path.tinker_path, type="save_weights_for_sampler")

        return self._ordered(run)

    def _annotate(
        self, path: ParsedCheckpointTinkerPath, ttl_seconds: int | None, user_metadata: dict[str, str] | None
    ) -> None:
        store = local_store(self.session)
        if store is not None and (ttl_seconds is not None or user_metadata is not None):
            store.annotate(path, expiry(ttl_seconds), user_metadata)

    def save_weights_and_get_sampling_client(
        self, name: str | None = None, record_stability_info: bool = False, kind: str = "snapshot"
    ) -> BackcompatSamplingClientFuture:
        """A sampler of the weights at this point in the order; ``name`` is deprecated in the SDK
        and has no effect there either. ``record_stability_info``: SDK-3.

        ``kind="snapshot"``: the weights stay fixed (SMP-14). ``kind="inflight"``: publishes them
        as this training client's inflight weights and returns a sampler that serves, at each
        request, the weights of the newest inflight save of this training client (INF-1..INF-4);
        any other ``kind`` is a ``BadRequestError`` naming it (INF-6)."""
        kind = check_sampler_kind(kind)
        if not isinstance(record_stability_info, bool):
            raise BadRequestError("record_stability_info", f"must be a bool, got {record_stability_info!r}")

        async def run(backend: Backend) -> SamplingClient:
            spec = await backend.create_sampler(model_id=self.model_id)
            if kind == "snapshot":
                return SamplingClient(self.session, spec, record_stability_info)
            self._inflight.publish(SamplingClient(self.session, spec))
            return InflightSamplingClient(self.session, self._inflight, spec, record_stability_info)

        return BackcompatSamplingClientFuture(self._ordered(run))

    def create_sampling_client(
        self, model_path: str, record_stability_info: bool = False
    ) -> BackcompatSamplingClientFuture:
        """A sampler over saved weights (same as ``ServiceClient.create_sampling_client``)."""
        return BackcompatSamplingClientFuture(
            create_sampling_client(self.session, model_path=model_path, record_stability_info=record_stability_info)
        )

    def release(self) -> APIFuture[None]:
        """Free this model on the backend once every request before this one has run; the client
        must not be used afterwards (a server uses this when it reaps or replaces a model)."""
        return self._ordered(lambda b: b.release_model(self.model_id))

    # -- information ------------------------------------------------------------------------

    def get_info(self) -> GetInfoResponse:
        return GetInfoResponse(
            type="get_info",
            model_data=ModelData(arch="lora", model_name=self.spec.base_model, tokenizer_id=self.spec.base_model),
            model_id=self.model_id,
            is_lora=True,
            lora_rank=self.spec.lora.rank,
            model_name=self.spec.base_model,
        )

    def get_tokenizer(self) -> Tokenizer:
        return self.session.backend.get_tokenizer(self.spec.base_model)

    def read_state(self) -> APIFuture[AdapterState]:
        """Adapter weights, accumulated gradient and AdamW state at this point in the order
        (capability ``introspection``)."""
        if not self.session.capabilities.supports("introspection"):
            raise Unsupported("introspection", self.session.backend_name)
        return self._ordered(lambda b: b.read_state(self.model_id))

    # -- async twins: coroutines resolving to the future (double-await style) -----------------

    async def forward_async(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: Mapping[str, float | str] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self.forward(data, loss_fn, loss_fn_config)

    async def forward_backward_async(
        self, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float | str] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self.forward_backward(data, loss_fn, loss_fn_config)

    async def forward_backward_custom_async(
        self, data: list[Datum], loss_fn: CustomLossFn | LossHandle, *, loss_type_input: str | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self.forward_backward_custom(data, loss_fn, loss_type_input=loss_type_input)

    async def optim_step_async(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        return self.optim_step(optim_params, adam_params=adam_params)

    async def save_state_async(self, name: str, **kwargs: Any) -> APIFuture[SaveWeightsResponse]:
        return self.save_state(name, **kwargs)

    async def save_weights_for_sampler_async(
        self, name: str, **kwargs: Any
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        return self.save_weights_for_sampler(name, **kwargs)

    async def save_weights_and_get_sampling_client_async(
        self, name: str | None = None, record_stability_info: bool = False, kind: str = "snapshot"
    ) -> SamplingClient:
        return await self.save_weights_and_get_sampling_client(name, record_stability_info, kind)

    async def create_sampling_client_async(
        self, model_path: str, record_stability_info: bool = False
    ) -> SamplingClient:
        return await self.create_sampling_client(model_path, record_stability_info)

    async def get_info_async(self) -> GetInfoResponse:
        return self.get_info()


def _check_loss_type_input(loss_type_input: Any) -> None:
    """The SDK's deprecated ``loss_type_input``: ``None`` or ``"logprobs"`` (warned), else refused."""
    if loss_type_input is None:
        return
    if loss_type_input != "logprobs":
        raise BadRequestError("loss_type_input", f"only 'logprobs' (deprecated, the default), got {loss_type_input!r}")
    warnings.warn(
        "loss_type_input is deprecated (as in the tinker SDK 0.38): a custom loss always receives logprobs",
        DeprecationWarning,
        stacklevel=3,
    )


def _check_overwrite(overwrite: Any) -> None:
    """``overwrite`` must be a bool: the SDK's ``save_weights_for_sampler`` takes ``user_metadata``
    third, so a dict passed positionally lands here and must not read as ``True``."""
    if not isinstance(overwrite, bool):
        raise BadRequestError("overwrite", f"must be a bool, got {type(overwrite).__name__}")
