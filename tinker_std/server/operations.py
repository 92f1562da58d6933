"""What each Tinker endpoint does, on a tinker-std ``ServiceClient``; no HTTP here.

``WireService.call(request)`` takes a ``WireRequest`` (method, endpoint path after ``/api/v1/``,
query, raw body, the caller's tenant) and returns a ``WireReply`` (status, content type, body).
Requests go through the same client layer as in-process use, so validation, ordering and errors
are the library's:

- training requests of one model carry the SDK's ``seq_id`` and run strictly in that order
  (``SeqLane``). Once the model and the ``seq_id`` of a request are known, the request *consumes*
  its ``seq_id`` whatever happens next: a body that fails to decode or validate, or a request
  that fails to run, fails its own future (``retrieve_future`` answers ``{"error", "category"}``,
  which the SDK raises as ``RequestFailedError``) and the next request runs. A retried request
  (same ``seq_id``, same body) answers the original ``request_id``;
- every asynchronous operation answers ``{"request_id": ...}`` at once and its result is fetched
  with ``retrieve_future``: protobuf for ``ForwardBackwardOutput`` / ``SampleResponse``, JSON
  otherwise; errors name their type (``BadRequestError: data[0]...: ...``), category ``user`` for
  tinker-std's typed errors and ``server`` for anything else;
- model ids have the form ``"{session_id}:train:{model_seq_id}"`` (the SDK assumes it), and that
  id is also the training run id in every ``tinker://`` path the SDK sees. A session, its models,
  samplers, request ids and checkpoints belong to the tenant of the key that created them; any
  other tenant gets 404 (``NotFoundError``) for them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tinker_std.client.sampling import SamplingClient
from tinker_std.client.service import ServiceClient
from tinker_std.client.training import TrainingClient
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError, RequestFailedError, TinkerError
from tinker_std.futures import APIFuture
from tinker_std.types import AdamParams, ModelInput, ParsedCheckpointTinkerPath, SamplingParams

from . import wire
from .lanes import SeqLane
from .records import ServerRecords
from .rest import UNSUPPORTED
from .tenants import OPEN_TENANT

__all__ = ["WireReply", "WireRequest", "WireService"]

#: How long ``retrieve_future`` waits for a result before answering ``try_again`` (the SDK's
#: own HTTP timeout is 45 s).
LONG_POLL_S = 20.0
PROTOBUF = "application/x-protobuf"
SEGMENT = {"training": "weights", "sampler": "sampler_weights"}


class ServerShutdown(TinkerError):
    """The server stopped before this request finished."""


class ServerUnsupported(TinkerError):
    """A documented part of the Tinker API that the tinker-std server refuses (docs/server.md)."""


@dataclass(frozen=True)
class WireReply:
    """One HTTP answer."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, value: Any, status: int = 200) -> WireReply:
        return cls(status, "application/json", json.dumps(value).encode())


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request, after transport concerns (auth, size, compression) were handled."""

    endpoint: str
    body: bytes = b""
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    tenant: str = OPEN_TENANT

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise BadRequestError("body", f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadRequestError("body", "must be a JSON object")
        return value


@dataclass
class _Session:
    tenant: str
    last_seen: float = field(default_factory=time.monotonic)
    models: set[str] = field(default_factory=set)
    samplers: set[str] = field(default_factory=set)


@dataclass
class _Model:
    """A training model as the SDK sees it: its client may be replaced by ``load_state``."""

    model_id: str
    tenant: str
    session_id: str
    digest: str  # of the create request, to answer its retries
    request_id: str
    lane: SeqLane
    client: TrainingClient | None = None


@dataclass
class _Sampler:
    tenant: str
    client: SamplingClient
    model_path: str | None
    base_model: str


@dataclass
class _Pending:
    future: Future[Any]
    kind: str
    tenant: str


class WireService:
    """The Tinker HTTP API's operations over ``service`` (any tinker-std backend)."""

    def __init__(
        self,
        service: ServiceClient,
        sdk_chunk_datums: int | None = None,
        records: ServerRecords | None = None,
        compress_requests: bool = False,
        idle_session_s: float | None = None,
        gap_timeout_s: float = 30.0,
    ) -> None:
        """``sdk_chunk_datums``: tell the SDK to send at most this many datums per
        ``forward_backward`` request (its default is 1024); each chunk is a request of its own.
        ``records``: where runs and checkpoints are recorded (default: in memory).
        ``compress_requests``: ask the SDK for zstd ``forward_backward`` bodies.
        ``idle_session_s``: sessions without a request or heartbeat for this long are reaped
        (``reap_idle``) and their models and samplers released. ``gap_timeout_s``: how long later
        requests wait for a ``seq_id`` that never arrives (``SeqLane``)."""
        self.gap_timeout_s = gap_timeout_s
        self.service = service
        self.sdk_chunk_datums = sdk_chunk_datums
        self.records = records or ServerRecords()
        self.compress_requests = compress_requests
        self.idle_session_s = idle_session_s
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._models: dict[str, _Model] = {}
        self._samplers: dict[str, _Sampler] = {}
        self._futures: dict[str, _Pending] = {}
        self._tokenizer_dirs: dict[str, str | None] = {}
        self._closing = False
        from .rest import RestRoutes  # the REST half shares this state

        self.rest = RestRoutes(self)
        self._routes: dict[str, Callable[[WireRequest], WireReply]] = {
            "client/config": self._client_config,
            "client/dynamic_config": self._client_config,
            "create_session": self._create_session,
            "session_heartbeat": self._heartbeat,
            "telemetry": lambda r: WireReply.json({"status": "accepted"}),
            "healthz": lambda r: WireReply.json({"status": "ok"}),
            "get_server_capabilities": lambda r: WireReply.json(
                self.service.get_server_capabilities().model_dump(mode="json")
            ),
            "create_model": self._create_model,
            "get_info": self._get_info,
            "forward_backward": self._forward_backward,
            "optim_step": self._optim_step,
            "save_weights": self._save_weights,
            "save_weights_for_sampler": self._save_weights_for_sampler,
            "load_weights": self._load_weights,
            "create_sampling_session": self._create_sampling_session,
            "asample": self._asample,
            "retrieve_future": self._retrieve_future,
            "save_weights_external": self._save_weights_external,
        }

    # -- entry point ------------------------------------------------------------------------

    def call(self, request: WireRequest) -> WireReply:
        """Answer one request. 404 for an unknown endpoint or an object the caller's tenant does
        not own; 400 with ``{"error", "field", "category"}`` for a request rejected before any
        state changed and before it had a future of its own."""
        try:
            route = self._routes.get(request.endpoint)
            if route is not None:
                return route(request)
            if request.endpoint.startswith("samplers/"):
                return self._get_sampler(request, request.endpoint.removeprefix("samplers/"))
            if request.endpoint.startswith("sessions/") and request.endpoint.endswith("/finish"):
                return self._finish_session(request, request.endpoint.split("/")[1])
            return self.rest.call(request)
        except BadRequestError as exc:
            return WireReply.json({"error": f"BadRequestError: {exc}", "field": exc.field, "category": "user"}, 400)
        except NotFoundError as exc:
            return WireReply.json({"error": f"NotFoundError: {exc}", "category": "user"}, 404)
        except ValidationError as exc:
            return WireReply.json({"error": f"BadRequestError: malformed request: {exc}", "category": "user"}, 400)
        except TinkerError as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"}, 400)
        except (KeyError, TypeError, ValueError, OverflowError, IndexError) as exc:
            return WireReply.json(
                {"error": f"BadRequestError: malformed request: {type(exc).__name__}: {exc}", "category": "user"}, 400
            )

    def close(self) -> None:
        """Fail every unfinished future with ``ServerShutdown`` (their long polls answer at once)."""
        with self._lock:
            self._closing = True
            pending = [p.future for p in self._futures.values()]
            lanes = [m.lane for m in self._models.values()]
        for future in pending:
            if not future.done():
                try:
                    future.set_exception(ServerShutdown("the server is shutting down"))
                except Exception:  # settled meanwhile
                    pass
        for lane in lanes:
            lane.close()
        self.records.close()

    # -- sessions ---------------------------------------------------------------------------

    def _client_config(self, request: WireRequest) -> WireReply:
        # The SDK's defaults, except plain httpx.
        flags: dict[str, Any] = {"use_pyqwest_transport": False, "proto_compress_fwdbwd": self.compress_requests}
        if self.sdk_chunk_datums is not None:
            flags["fwdbwd_max_chunk_len"] = self.sdk_chunk_datums
        return WireReply.json(flags)

    def _create_session(self, request: WireRequest) -> WireReply:
        session_id = f"session-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._sessions[session_id] = _Session(request.tenant)
        return WireReply.json({"type": "create_session", "session_id": session_id})

    def _heartbeat(self, request: WireRequest) -> WireReply:
        session_id = str(request.json().get("session_id"))
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.tenant != request.tenant:
                # 410 tells the SDK to stop its heartbeats (the session was reaped or never was)
                return WireReply.json({"error": f"session {session_id!r} is gone", "category": "user"}, 410)
            session.last_seen = time.monotonic()
        return WireReply.json({"type": "session_heartbeat"})

    def _finish_session(self, request: WireRequest, session_id: str) -> WireReply:
        with self._lock:
            session = self._sessions.get(session_id)
            owned = session is not None and session.tenant == request.tenant
        if owned:
            self._release_session(session_id)
        return WireReply.json({})

    def _session(self, tenant: str, session_id: Any) -> _Session:
        with self._lock:
            session = self._sessions.get(str(session_id))
            if session is None or session.tenant != tenant:
                raise NotFoundError(f"no session {session_id!r} on this server")
            session.last_seen = time.monotonic()
            return session

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Release every session idle for ``idle_session_s``; the ids reaped."""
        if self.idle_session_s is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [sid for sid, s in self._sessions.items() if now - s.last_seen >= self.idle_session_s]
        for session_id in idle:
            self._release_session(session_id)
        return idle

    def _release_session(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is None:
                return
            models = [self._models.pop(m) for m in session.models if m in self._models]
            for sampler_id in session.samplers:
                self._samplers.pop(sampler_id, None)  # the backend sampler goes with its last client
        for model in models:
            if model.client is not None:
                model.client.release()
            model.lane.close()

    # -- training ---------------------------------------------------------------------------

    def _create_model(self, request: WireRequest) -> WireReply:
        body = request.json()
        session = self._session(request.tenant, body.get("session_id"))
        model_id = f"{body['session_id']}:train:{_int(body.get('model_seq_id'), 'model_seq_id')}"
        lora = body.get("lora_config") or {}
        if not isinstance(lora, dict):
            raise BadRequestError("lora_config", "must be an object")
        base_model = body.get("base_model")
        existing = self._claim_model(model_id, request, session)
        if existing is not None:
            return existing

        def create() -> dict[str, str]:
            client = self.service.create_lora_training_client(
                base_model=base_model,  # validated by the client
                rank=lora.get("rank", 32),
                seed=lora.get("seed"),
                train_mlp=lora.get("train_mlp", True),
                train_attn=lora.get("train_attn", True),
                train_unembed=lora.get("train_unembed", True),
                user_metadata=body.get("user_metadata"),
            ).result()
            self._attach(model_id, client, body.get("user_metadata"))
            return {"model_id": model_id, "type": "create_model"}

        return self._start_model(model_id, create)

    def _claim_model(self, model_id: str, request: WireRequest, session: _Session) -> WireReply | None:
        """Reserve ``model_id`` for this request; for a retry of the same request its original
        answer; ``ConflictError`` if another request holds the id."""
        digest = _digest(request.body)
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                if model.tenant == request.tenant and model.digest == digest:
                    return WireReply.json({"request_id": model.request_id, "model_id": model_id})
                raise ConflictError(f"model id {model_id!r} already exists")
            self._models[model_id] = _Model(
                model_id,
                request.tenant,
                model_id.split(":train:")[0],
                digest,
                uuid.uuid4().hex,
                SeqLane(model_id, self.gap_timeout_s),
            )
            session.models.add(model_id)
        return None

    def _start_model(self, model_id: str, work: Callable[[], dict[str, str]]) -> WireReply:
        """Run ``work`` (which creates the model's client) on a thread; forget the id if it fails."""
        model = self._models[model_id]
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:
                with self._lock:
                    self._models.pop(model_id, None)
                model.lane.close()
                future.set_exception(exc)

        self._store(future, "json", model.tenant, model.request_id)
        threading.Thread(target=run, daemon=True).start()
        return WireReply.json({"request_id": model.request_id, "model_id": model_id})

    def _attach(self, model_id: str, client: TrainingClient, user_metadata: Any) -> None:
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                model.client = client
        if model is None:  # its session was reaped or finished meanwhile
            client.release()
            raise NotFoundError(f"the session of model {model_id!r} ended before the model was ready")
        lora = client.spec.lora
        self.records.add_run(
            model_id,
            model.tenant,
            client.spec.base_model,
            lora.rank,
            (lora.train_mlp, lora.train_attn, lora.train_unembed),
            user_metadata if isinstance(user_metadata, dict) else None,
        )

    def _load_weights(self, request: WireRequest) -> WireReply:
        body = request.json()
        path, with_optimizer = body.get("path"), bool(body.get("optimizer", False))
        if "session_id" in body:  # create-via-load (ServiceClient.create_training_client_from_state*)
            session = self._session(request.tenant, body["session_id"])
            model_id = f"{body['session_id']}:train:{_int(body.get('model_seq_id'), 'model_seq_id')}"
            existing = self._claim_model(model_id, request, session)
            if existing is not None:
                return existing

            def create() -> dict[str, str]:
                client = self._load_client(request.tenant, path, with_optimizer, body.get("base_model"))
                self._attach(model_id, client, body.get("user_metadata"))
                return {"model_id": model_id, "path": str(path), "type": "load_weights"}

            return self._start_model(model_id, create)

        # TrainingClient.load_state[_with_optimizer]: the same load, swapped in for the model's
        # client at this point of its order.
        def load(model: _Model) -> dict[str, str]:
            old = model.client
            assert old is not None
            new = self._load_client(request.tenant, path, with_optimizer, old.spec.base_model)
            model.client = new
            old.release().result()
            return {"path": str(path), "type": "load_weights"}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), load, "json")

    def _load_client(self, tenant: str, path: Any, with_optimizer: bool, base_model: Any) -> TrainingClient:
        backend_path = self.resolve_checkpoint(tenant, path, "path")
        if with_optimizer:
            future = self.service.create_training_client_from_state_with_optimizer(backend_path, base_model=base_model)
        else:
            future = self.service.create_training_client_from_state(backend_path, base_model=base_model)
        return future.result()

    def _get_info(self, request: WireRequest) -> WireReply:
        model = self._model(request.tenant, request.json().get("model_id"))
        client = _ready(model)
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

    def _forward_backward(self, request: WireRequest) -> WireReply:
        msg = wire.parse_forward_backward(request.body)

        def run(model: _Model) -> APIFuture[Any]:
            call = wire.decode_forward_backward(msg)
            client = _ready(model)
            method = client.forward if call.forward_only else client.forward_backward
            return method(call.data, call.loss_fn, call.loss_fn_config)

        return self._sequenced(request, msg.model_id, msg.seq_id, run, "forward_backward")

    def _optim_step(self, request: WireRequest) -> WireReply:
        body = request.json()

        def run(model: _Model) -> APIFuture[Any]:
            if body.get("optimizer_params") and not body.get("adam_params"):
                raise BadRequestError("optimizer_params", "only AdamW (adam_params) is part of tinker-std v0.1")
            try:
                params = AdamParams.model_validate(body.get("adam_params") or {})
            except ValidationError as exc:
                raise _bad_request(exc, "adam_params") from None
            return _ready(model).optim_step(params)

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), run, "json")

    def _save_weights(self, request: WireRequest) -> WireReply:
        return self._save(request, "training")

    def _save_weights_for_sampler(self, request: WireRequest) -> WireReply:
        body = request.json()
        if body.get("path"):
            return self._save(request, "sampler")

        def snapshot(model: _Model) -> dict[str, Any]:
            sampler = _ready(model).save_weights_and_get_sampling_client().result()
            sampler_id = self._register_sampler(model.tenant, model.session_id, sampler, None)
            return {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), snapshot, "json")

    def _save(self, request: WireRequest, kind: str) -> WireReply:
        body = request.json()
        name, overwrite = body.get("path"), bool(body.get("overwrite", False))
        ttl = body.get("ttl_seconds")

        def save(model: _Model) -> dict[str, Any]:
            if not isinstance(name, str):
                raise BadRequestError("path", "must be a checkpoint name")
            if ttl is not None and (not isinstance(ttl, int) or ttl <= 0):
                raise BadRequestError("ttl_seconds", f"must be a positive integer, got {ttl!r}")
            checkpoint_id = f"{SEGMENT[kind]}/{name}"
            prior = self.records.checkpoint(model.tenant, model.model_id, checkpoint_id)
            if prior is not None and not overwrite:
                raise ConflictError(f"checkpoint {prior.tinker_path} exists; pass overwrite=True to replace it")
            client = _ready(model)
            if kind == "training":
                saved_path = client.save_state(name, overwrite=overwrite).result().path
            else:
                saved_path = client.save_weights_for_sampler(name, overwrite=overwrite).result().path
            self.records.add_checkpoint(
                model.model_id,
                checkpoint_id,
                model.tenant,
                kind,
                saved_path,
                size_bytes=self._size_of(saved_path),
                expires_at=time.time() + ttl if ttl else None,
                user_metadata=body.get("user_metadata") if isinstance(body.get("user_metadata"), dict) else None,
            )
            if prior is not None and prior.backend_path != saved_path:
                self.delete_backend_checkpoint(prior.backend_path)  # the name now points elsewhere
            self.records.touch_run(model.model_id)
            kind_tag = "save_weights" if kind == "training" else "save_weights_for_sampler"
            return {"path": f"tinker://{model.model_id}/{checkpoint_id}", "type": kind_tag}

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), save, "json")

    def _save_weights_external(self, request: WireRequest) -> WireReply:
        body = request.json()

        def refuse(model: _Model) -> None:
            raise ServerUnsupported(UNSUPPORTED["save_weights_external"])

        return self._sequenced(request, body.get("model_id"), body.get("seq_id"), refuse, "json")

    # -- checkpoints on the backend ---------------------------------------------------------

    def resolve_checkpoint(self, tenant: str, path: Any, field_name: str) -> str:
        """The backend path behind a wire ``tinker://`` path of ``tenant``; ``NotFoundError`` if
        the tenant has no such checkpoint."""
        try:
            parsed = ParsedCheckpointTinkerPath.from_tinker_path(path)
        except ValueError as exc:
            raise BadRequestError(field_name, str(exc)) from None
        record = self.records.checkpoint(tenant, parsed.training_run_id, parsed.checkpoint_id)
        if record is None:
            raise NotFoundError(f"no checkpoint at {path}")
        return record.backend_path

    def delete_backend_checkpoint(self, backend_path: str) -> None:
        store = getattr(self.service.backend, "checkpoint_store", None)
        if store is None:
            return
        try:
            store.delete(ParsedCheckpointTinkerPath.from_tinker_path(backend_path))
        except NotFoundError:
            pass

    def _size_of(self, backend_path: str) -> int | None:
        store = getattr(self.service.backend, "checkpoint_store", None)
        if store is None:
            return None
        try:
            folder = store.directory(ParsedCheckpointTinkerPath.from_tinker_path(backend_path))
            return int(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
        except Exception:
            return None

    # -- sampling ---------------------------------------------------------------------------

    def _create_sampling_session(self, request: WireRequest) -> WireReply:
        body = request.json()
        session_id = body.get("session_id")
        self._session(request.tenant, session_id)
        model_path, base_model = body.get("model_path"), body.get("base_model")
        backend_path = None if model_path is None else self.resolve_checkpoint(request.tenant, model_path, "model_path")
        client = self.service.create_sampling_client(model_path=backend_path, base_model=base_model).result()
        sampler_id = self._register_sampler(request.tenant, str(session_id), client, model_path)
        return WireReply.json({"type": "create_sampling_session", "sampling_session_id": sampler_id})

    def _get_sampler(self, request: WireRequest, sampler_id: str) -> WireReply:
        sampler = self._sampler(request.tenant, sampler_id)
        return WireReply.json(
            {"sampler_id": sampler_id, "base_model": sampler.base_model, "model_path": sampler.model_path}
        )

    def _asample(self, request: WireRequest) -> WireReply:
        body = request.json()
        sampler = self._sampler(request.tenant, body.get("sampling_session_id"))
        num_samples = body.get("num_samples", 1)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or not 1 <= num_samples <= 1024:
            raise BadRequestError("num_samples", f"must be an integer in [1, 1024], got {num_samples!r}")
        answer: Future[Any] = Future()
        try:
            chunks = (body.get("prompt") or {}).get("chunks")
            if not isinstance(chunks, list):
                raise BadRequestError("prompt.chunks", "must be a list of chunks")
            tokens = [t for j, chunk in enumerate(chunks) for t in _chunk_tokens(chunk, j)]
            raw_params = body.get("sampling_params") or {}
            if not isinstance(raw_params, dict):
                raise BadRequestError("sampling_params", "must be an object")
            try:
                params = SamplingParams.model_validate(
                    {k: v for k, v in raw_params.items() if k in SamplingParams.model_fields}
                )
                prompt = ModelInput.from_ints(tokens)
            except ValidationError as exc:
                raise _bad_request(exc, "sampling_params") from None
            future = sampler.client.sample(
                prompt,
                num_samples,
                params,
                include_prompt_logprobs=bool(body.get("prompt_logprobs") or False),
                topk_prompt_logprobs=_int(body.get("topk_prompt_logprobs") or 0, "topk_prompt_logprobs"),
            )
            _chain(future.future(), answer)
        except Exception as exc:  # a rejected sample fails its own future, like a training request
            answer.set_exception(exc)
        request_id = self._store(answer, "sample", request.tenant)
        ids = [f"{request_id}-{j}" for j in range(num_samples)]
        return WireReply.json({"request_id": request_id, "sample_sequence_ids": ids})

    # -- futures ----------------------------------------------------------------------------

    def _retrieve_future(self, request: WireRequest) -> WireReply:
        request_id = request.json().get("request_id")
        with self._lock:
            entry = self._futures.get(str(request_id))
        if entry is None or entry.tenant != request.tenant:
            return WireReply.json(
                {"error": f"NotFoundError: unknown request_id {request_id!r}", "category": "user"}, 404
            )
        try:
            result = entry.future.result(timeout=LONG_POLL_S)
        except TimeoutError:
            return WireReply.json({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        except RequestFailedError as exc:
            return WireReply.json({"error": f"RequestFailedError: {exc}", "category": exc.category})
        except ServerUnsupported as exc:
            return WireReply.json({"error": f"Unsupported: {exc}", "category": "user"})
        except TinkerError as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"})
        except ValidationError as exc:
            return WireReply.json({"error": f"BadRequestError: {exc}", "category": "user"})
        except Exception as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "server"})
        if entry.kind == "forward_backward":
            return WireReply(200, PROTOBUF, wire.encode_forward_backward_output(result))
        if entry.kind == "sample":
            return WireReply(200, PROTOBUF, wire.encode_sample_response(result))
        return WireReply.json(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)

    def _store(self, future: Future[Any], kind: str, tenant: str, request_id: str | None = None) -> str:
        request_id = request_id or uuid.uuid4().hex
        with self._lock:
            if self._closing and not future.done():
                future.set_exception(ServerShutdown("the server is shutting down"))
            self._futures[request_id] = _Pending(future, kind, tenant)
        return request_id

    def _sequenced(
        self, request: WireRequest, model_id: Any, seq_id: Any, run: Callable[[_Model], Any], kind: str
    ) -> WireReply:
        """Admit ``run`` as request ``seq_id`` of ``model_id``: it runs after every lower
        ``seq_id``; whatever it raises or returns (a value or an ``APIFuture``) settles this
        request's future. A retry of an admitted request answers its original request id."""
        model = self._model(request.tenant, model_id)
        seq = None if seq_id is None else _int(seq_id, "seq_id")
        answer: Future[Any] = Future()
        request_id = uuid.uuid4().hex

        def step() -> None:
            try:
                outcome = run(model)
            except Exception as exc:
                answer.set_exception(exc)
                return
            if isinstance(outcome, APIFuture):
                _chain(outcome.future(), answer)
            else:
                answer.set_result(outcome)

        self._store(answer, kind, request.tenant, request_id)
        answered = model.lane.admit(seq, _digest(request.body), request_id, step)
        if answered != request_id:
            with self._lock:
                self._futures.pop(request_id, None)
        self.records.touch_run(model.model_id) if kind == "json" else None
        return WireReply.json({"request_id": answered, "model_id": model.model_id})

    # -- registries -------------------------------------------------------------------------

    def _model(self, tenant: str, model_id: Any) -> _Model:
        with self._lock:
            model = self._models.get(str(model_id))
            if model is None or model.tenant != tenant:
                raise NotFoundError(f"no training model {model_id!r} on this server")
            session = self._sessions.get(model.session_id)
            if session is not None:
                session.last_seen = time.monotonic()
        return model

    def _register_sampler(self, tenant: str, session_id: str, client: SamplingClient, model_path: str | None) -> str:
        sampler_id = f"sampler-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._samplers[sampler_id] = _Sampler(tenant, client, model_path, client.get_base_model())
            session = self._sessions.get(session_id)
            if session is not None:
                session.samplers.add(sampler_id)
        return sampler_id

    def _sampler(self, tenant: str, sampler_id: Any) -> _Sampler:
        with self._lock:
            sampler = self._samplers.get(str(sampler_id))
        if sampler is None or sampler.tenant != tenant:
            raise NotFoundError(f"no sampling session {sampler_id!r} on this server")
        return sampler

    def sessions_of(self, tenant: str) -> dict[str, _Session]:
        with self._lock:
            return {sid: s for sid, s in self._sessions.items() if s.tenant == tenant}


def _ready(model: _Model) -> TrainingClient:
    if model.client is None:
        raise NotFoundError(f"training model {model.model_id!r} is still being created")
    return model.client


def _chain(source: Future[Any], target: Future[Any]) -> None:
    def settle(done: Future[Any]) -> None:
        error = done.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(settle)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(name, f"must be an integer, got {value!r}")
    return value


def _bad_request(exc: ValidationError, prefix: str) -> BadRequestError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return BadRequestError(f"{prefix}.{where}" if where else prefix, first["msg"])


def _chunk_tokens(chunk: Any, index: int) -> list[int]:
    where = f"prompt.chunks[{index}]"
    if not isinstance(chunk, dict):
        raise BadRequestError(where, "must be an object")
    if chunk.get("type", "encoded_text") != "encoded_text":
        raise BadRequestError(where, f"{chunk.get('type')} chunks are not supported (text tokens only)")
    tokens = chunk.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequestError(f"{where}.tokens", "must be a list of integer token ids")
    return tokens
