"""Training endpoints: create (or load) a model, ``forward_backward``, ``optim_step``, saves, loads
and ``get_info``, over the library's ``TrainingClient``.

Every request of a model carries the SDK's ``seq_id`` and runs strictly in that order
(``SeqLane``). Once the model and the ``seq_id`` of a request are known, the request *consumes*
its ``seq_id`` whatever happens next: a body that fails to decode or validate, or a request that
fails to run, fails its own future and the next request runs. A retried request (same
``seq_id``, same body) answers the original ``request_id``. Model ids are
``"{session_id}:train:{model_seq_id}"``, which is also the training run id in every
``tinker://`` path the SDK sees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tinker_std.client.service import ServiceClient
from tinker_std.client.training import TrainingClient
from tinker_std.errors import BadRequestError, ConflictError, CorruptCheckpointError, StorageFullError
from tinker_std.futures import APIFuture
from tinker_std.types import AdamParams

from . import protobuf
from .checkpoint_files import CheckpointFiles
from .custom_loss_routes import CustomLossRoutes
from .external_weights import ExternalWeights
from .futures import FutureStore, ResultKind, chain, new_request_id, settle_exception, settle_result
from .messages import Endpoint, WireReply, WireRequest, field_error, operation_digest, require_int
from .records import ServerRecords
from .sdk_fields import check_optimizer_config, check_sampler_kind, check_weights_access_token, scoped_datums
from .state import ServerState, TrainingModel

__all__ = ["TrainingRoutes"]

#: checkpoint kind -> the segment of its ``tinker://`` path
SEGMENT = {"training": "weights", "sampler": "sampler_weights"}


class TrainingRoutes:
    """The training endpoints over ``service``'s training clients."""

    def __init__(
        self,
        service: ServiceClient,
        state: ServerState,
        futures: FutureStore,
        records: ServerRecords,
        checkpoints: CheckpointFiles,
        external: ExternalWeights | None = None,
        custom_losses: CustomLossRoutes | None = None,
    ) -> None:
        """``custom_losses``: where ``loss_fn="custom"`` requests find their uploaded loss (spec
        12); without it they are refused as an unknown loss."""
        self.service = service
        self.custom_losses = custom_losses
        self.state = state
        self.futures = futures
        self.records = records
        self.checkpoints = checkpoints
        self.external = external or ExternalWeights(service, records, checkpoints)
        self._tokenizer_dirs: dict[str, str | None] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("create_model", self.create_model),
            Endpoint("get_info", self.get_info),
            Endpoint("forward_backward", self.forward_backward, inline=True),
            Endpoint("optim_step", self.optim_step, inline=True),
            Endpoint("save_weights", self.save_weights),
            Endpoint("save_weights_for_sampler", self.save_weights_for_sampler),
            Endpoint("load_weights", self.load_weights),
            Endpoint("save_weights_external", self.save_weights_external),
        ]

    # -- creating a model -------------------------------------------------------------------

    def create_model(self, request: WireRequest) -> WireReply:
        body = request.json()
        session = self.state.session(request.tenant, body.get("session_id"))
        model_id = f"{body['session_id']}:train:{require_int(body.get('model_seq_id'), 'model_seq_id')}"
        lora = body.get("lora_config") or {}
        if not isinstance(lora, dict):
            raise BadRequestError("lora_config", "must be an object")
        check_optimizer_config(body.get("optimizer_config"))
        base_model = body.get("base_model")
        original = self.state.claim_model(model_id, request.tenant, operation_digest(request), session)
        if original is not None:
            return WireReply.json({"request_id": original, "model_id": model_id})

        def create() -> dict[str, str]:
            client = self.service.create_lora_training_client(
                base_model=base_model,  # validated by the client
                rank=lora.get("rank", 32),
                seed=lora.get("seed"),
                train_mlp=lora.get("train_mlp", True),
                train_attn=lora.get("train_attn", True),
                train_unembed=lora.get("train_unembed", True),
            ).result()  # user_metadata: recorded by the server on the run (_attach), not in process
            self._attach(model_id, client, body.get("user_metadata"))
            return {"model_id": model_id, "type": "create_model"}

        return self._start_model(model_id, create)

    def _start_model(self, model_id: str, work: Callable[[], dict[str, str]]) -> WireReply:
        """Run ``work`` (which creates the model's client) on a thread; forget the id if it fails."""
        model = self.state.reserved_model(model_id)
        future: Future[Any] = Future()

        def run() -> None:
            try:
                settle_result(future, work())
            except BaseException as exc:
                self.state.forget_model(model_id)
                settle_exception(future, exc)

        self.futures.store(future, "json", model.tenant, model.request_id)
        threading.Thread(target=run, daemon=True).start()
        return WireReply.json({"request_id": model.request_id, "model_id": model_id})

    def _attach(self, model_id: str, client: TrainingClient, user_metadata: Any) -> None:
        model = self.state.attach(model_id, client)
        lora = client.spec.lora
        self.records.add_run(
            model_id,
            model.tenant,
            client.spec.base_model,
            lora.rank,
            (lora.train_mlp, lora.train_attn, lora.train_unembed),
            user_metadata if isinstance(user_metadata, dict) else None,
        )

    def load_weights(self, request: WireRequest) -> WireReply:
        body = request.json()
        path, with_optimizer = body.get("path"), bool(body.get("optimizer", False))
        if "session_id" in body:  # create-via-load (ServiceClient.create_training_client_from_state*)
            check_optimizer_config(body.get("optimizer_config"))
            check_weights_access_token(body.get("weights_access_token"))
            session = self.state.session(request.tenant, body["session_id"])
            model_id = f"{body['session_id']}:train:{require_int(body.get('model_seq_id'), 'model_seq_id')}"
            original = self.state.claim_model(model_id, request.tenant, operation_digest(request), session)
            if original is not None:
                return WireReply.json({"request_id": original, "model_id": model_id})

            def create() -> dict[str, str]:
                client = self._load_client(request.tenant, path, with_optimizer, body.get("base_model"))
                self._attach(model_id, client, body.get("user_metadata"))
                return {"model_id": model_id, "path": str(path), "type": "load_weights"}

            return self._start_model(model_id, create)

        # TrainingClient.load_state[_with_optimizer]: the same load, swapped in for the model's
        # client at this point of its order.
        def load(model: TrainingModel) -> dict[str, str]:
            check_optimizer_config(body.get("optimizer_config"))
            check_weights_access_token(body.get("weights_access_token"))
            old = model.client
            assert old is not None
            new = self._load_client(request.tenant, path, with_optimizer, old.spec.base_model)
            model.client = new
            old.release().result()
            return {"path": str(path), "type": "load_weights"}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), load, "json")

    def _load_client(self, tenant: str, path: Any, with_optimizer: bool, base_model: Any) -> TrainingClient:
        backend_path = self.checkpoints.resolve(tenant, path, "path")
        if with_optimizer:
            future = self.service.create_training_client_from_state_with_optimizer(backend_path, base_model=base_model)
        else:
            future = self.service.create_training_client_from_state(backend_path, base_model=base_model)
        try:
            return future.result()
        except CorruptCheckpointError as exc:  # name the tenant's path, not the backend's (CKPT-14)
            raise CorruptCheckpointError(str(path), exc.problem) from None

    # -- information ------------------------------------------------------------------------

    def get_info(self, request: WireRequest) -> WireReply:
        model = self.state.model(request.tenant, request.json().get("model_id"))
        client = model.ready()
        info = client.get_info().model_dump(mode="json")
        info["model_id"] = model.model_id
        folder = self._tokenizer_dir(client.spec.base_model)
        if folder is not None:
            info["model_data"]["tokenizer_id"] = folder
        return WireReply.json(info)

    def _tokenizer_dir(self, base_model: str) -> str | None:
        """The local folder of ``base_model``'s tokenizer, if the backend loads it from one (so the
        SDK's ``get_tokenizer`` on this machine needs no hub)."""
        if base_model not in self._tokenizer_dirs:
            folder = None
            try:
                name = getattr(self.service.backend.get_tokenizer(base_model), "name_or_path", None)
                if isinstance(name, str) and Path(name).is_dir():
                    folder = str(Path(name).resolve())
            except Exception:
                folder = None
            self._tokenizer_dirs[base_model] = folder
        return self._tokenizer_dirs[base_model]

    # -- training steps ---------------------------------------------------------------------

    def forward_backward(self, request: WireRequest) -> WireReply:
        msg = protobuf.parse_forward_backward(request.body)

        def run(model: TrainingModel) -> APIFuture[Any]:
            if msg.loss_fn == "custom" and self.custom_losses is not None:  # an uploaded loss (CLG-3)
                return self.custom_losses.forward_backward(model, msg)
            call = protobuf.decode_forward_backward(msg)
            client = model.ready()
            method = client.forward if call.forward_only else client.forward_backward
            # span ids name this tenant's recorded samples only (sdk_fields.record_sample)
            return method(scoped_datums(call.data, model.tenant), call.loss_fn, call.loss_fn_config)

        return self._sequenced(
            request,
            msg.model_id,
            msg.seq_id,
            run,
            "forward_backward",
            idempotent=msg.forward_only,
            run_here=msg.loss_fn != "custom",  # an uploaded loss may block on its graph
        )

    def optim_step(self, request: WireRequest) -> WireReply:
        body = request.json()

        def run(model: TrainingModel) -> APIFuture[Any]:
            if body.get("optimizer_params") and not body.get("adam_params"):
                raise BadRequestError("optimizer_params", "only AdamW (adam_params) is part of tinker-std spec 0.2")
            try:
                params = AdamParams.model_validate(body.get("adam_params") or {})
            except ValidationError as exc:
                raise field_error(exc, "adam_params") from None
            return model.ready().optim_step(params)

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), run, "json", run_here=True)

    # -- saving -----------------------------------------------------------------------------

    def save_weights(self, request: WireRequest) -> WireReply:
        return self._save(request, "training")

    def save_weights_for_sampler(self, request: WireRequest) -> WireReply:
        body = request.json()
        kind = body.get("kind")
        if kind not in (None, "snapshot", "inflight") or (kind == "inflight" and body.get("path")):

            def refuse(model: TrainingModel) -> None:
                check_sampler_kind(kind, named=bool(body.get("path")))

            return self._sequenced(request, body.get("model_id"), body.get("seq_id"), refuse, "json")
        if body.get("path"):
            return self._save(request, "sampler")

        def sampler(model: TrainingModel) -> dict[str, Any]:
            """A snapshot or inflight sampler (INF-1), registered like any sampling session."""
            client = model.ready().save_weights_and_get_sampling_client(kind=kind or "snapshot").result()
            sampler_id = self.state.register_sampler(model.tenant, model.session_id, client, None)
            return {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), sampler, "json")

    def _save(self, request: WireRequest, kind: str) -> WireReply:
        body = request.json()
        name, overwrite = body.get("path"), bool(body.get("overwrite", False))
        ttl = body.get("ttl_seconds")

        def save(model: TrainingModel) -> dict[str, Any]:
            if not isinstance(name, str):
                raise BadRequestError("path", "must be a checkpoint name")
            if ttl is not None and (not isinstance(ttl, int) or ttl <= 0):
                raise BadRequestError("ttl_seconds", f"must be a positive integer, got {ttl!r}")
            checkpoint_id = f"{SEGMENT[kind]}/{name}"
            prior = self.records.checkpoint(model.tenant, model.model_id, checkpoint_id)
            if prior is not None and not overwrite:
                raise ConflictError(f"checkpoint {prior.tinker_path} exists; pass overwrite=True to replace it")
            client = model.ready()
            try:
                if kind == "training":
                    saved_path = client.save_state(name, overwrite=overwrite).result().path
                else:
                    saved_path = client.save_weights_for_sampler(name, overwrite=overwrite).result().path
            except StorageFullError:  # name the tenant's path, not the backend's (CKPT-15, CKPT-16)
                raise StorageFullError(f"tinker://{model.model_id}/{checkpoint_id}") from None
            self.records.add_checkpoint(
                model.model_id,
                checkpoint_id,
                model.tenant,
                kind,
                saved_path,
                size_bytes=self.checkpoints.size(saved_path),
                expires_at=time.time() + ttl if ttl else None,
                user_metadata=body.get("user_metadata") if isinstance(body.get("user_metadata"), dict) else None,
            )
            if prior is not None and prior.backend_path != saved_path:
                self.checkpoints.delete_files(prior.backend_path)  # the name now points elsewhere
            self.records.touch_run(model.model_id)
            kind_tag = "save_weights" if kind == "training" else "save_weights_for_sampler"
            return {"path": f"tinker://{model.model_id}/{checkpoint_id}", "type": kind_tag}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), save, "json")

    def save_weights_external(self, request: WireRequest) -> WireReply:
        """A standard peft adapter folder at ``tinker://<model>/external_weights/<name>``
        (``external_weights.py``)."""
        body = request.json()
        return self._sequenced(
            request, body.get("model_id"), body.get("seq_id"), lambda model: self.external.save(model, body), "json"
        )

    # -- ordering ---------------------------------------------------------------------------

    def _sequenced(
        self,
        request: WireRequest,
        model_id: Any,
        seq_id: Any,
        run: Callable[[TrainingModel], Any],
        kind: ResultKind,
        idempotent: bool = False,
        run_here: bool = False,
    ) -> WireReply:
        """Admit ``run`` as request ``seq_id`` of ``model_id``: it runs after every lower
        ``seq_id``; whatever it raises or returns (a value or an ``APIFuture``) settles this
        request's future. A retry of an admitted request answers its original request id. Only an
        ``idempotent`` request (one that changes nothing) may come without a ``seq_id``.

        A ``"json"`` request marks the run's last request time at admission
        (``ServerRecords.touch_run``, an in-memory note).

        ``run_here``: ``run`` does not block (it hands its work to the client layer), so on an
        idle lane it runs on this thread (``SeqLane.admit``), without a hand-off to the lane's."""
        model = self.state.model(request.tenant, model_id)
        if seq_id is None and not idempotent:
            # without a seq_id a resend cannot be told from a new request: it would apply twice
            raise BadRequestError("seq_id", "required for a request that changes the model (the SDK always sends it)")
        seq = None if seq_id is None else require_int(seq_id, "seq_id")
        if seq != model.lane.next_seq:  # the request the lane waits for is never refused: it unblocks the rest
            self.futures.check_capacity(request.tenant)
        answer: Future[Any] = Future()
        request_id = new_request_id()

        def step() -> None:
            try:
                outcome = run(model)
            except Exception as exc:
                settle_exception(answer, exc)
                return
            if isinstance(outcome, APIFuture):
                chain(outcome.future(), answer)
            else:
                settle_result(answer, outcome)

        answered = model.lane.admit(seq, operation_digest(request), request_id, step, run_here=run_here)
        if answered == request_id:  # a resend answers the original id: its own future never settles,
            # so storing it would hold one unit of the tenant's quota (LIM-6) for good. Stored after
            # admission: nothing can poll the id before this answer carries it. A result that settled
            # meanwhile is encoded off the event loop all the same (futures._settled).
            self.futures.store(answer, kind, request.tenant, request_id)
        if kind == "json":
            self.records.touch_run(model.model_id)
        return WireReply.json({"request_id": answered, "model_id": model.model_id})
