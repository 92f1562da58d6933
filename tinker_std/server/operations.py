"""What each Tinker endpoint does, on a tinker-std ``ServiceClient``; no HTTP here.

``WireService.call(endpoint, body)`` takes the endpoint path after ``/api/v1/``
and the raw body, and returns a ``WireReply`` (status, content type, body). Requests go through
the same client layer as in-process use, so validation, ordering and errors are the library's:

- training requests of one model carry the SDK's ``seq_id`` (1, 2, ... per training client) and
  are handed to the ``TrainingClient`` strictly in that order, whatever order they arrive in (the
  SDK sends the chunks of one call concurrently); the client then runs them in call order;
- every asynchronous operation answers ``{"request_id": ...}`` at once and its result is fetched
  with ``retrieve_future``: protobuf for ``ForwardBackwardOutput`` / ``SampleResponse``, JSON
  otherwise, ``{"error", "category"}`` for a failed request (``user`` for tinker-std's typed request
  errors, ``server`` for anything else);
- model ids have the form ``"{session_id}:train:{model_seq_id}"``, which the SDK assumes.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tinker_std.client.sampling import SamplingClient
from tinker_std.client.service import ServiceClient
from tinker_std.client.training import TrainingClient
from tinker_std.errors import BadRequestError, NotFoundError, RequestFailedError, TinkerError
from tinker_std.futures import APIFuture
from tinker_std.types import AdamParams, ForwardBackwardOutput, ModelInput, SamplingParams

from . import wire

__all__ = ["WireReply", "WireService"]

#: How long ``retrieve_future`` waits for a result before answering ``try_again`` (the SDK's
#: own HTTP timeout is 45 s).
LONG_POLL_S = 20.0
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class WireReply:
    """One HTTP answer."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, value: Any, status: int = 200) -> WireReply:
        return cls(status, "application/json", json.dumps(value).encode())


@dataclass
class _Lane:
    """The ``seq_id`` turnstile of one training model."""

    next_seq: int = 1
    waiting: dict[int, tuple[Callable[[], APIFuture[Any]], Future[Any]]] = field(default_factory=dict)
    turn: threading.Lock = field(default_factory=threading.Lock)


class WireService:
    """The Tinker HTTP API's operations over ``service`` (any tinker-std backend)."""

    def __init__(self, service: ServiceClient, sdk_chunk_datums: int | None = None) -> None:
        """``sdk_chunk_datums``: tell the SDK to send at most this many datums per
        ``forward_backward`` request (its default is 1024); each chunk is a request of its own."""
        self.service = service
        self.sdk_chunk_datums = sdk_chunk_datums
        self._lock = threading.Lock()
        self._models: dict[str, TrainingClient] = {}
        self._lanes: dict[str, _Lane] = {}
        self._samplers: dict[str, tuple[SamplingClient, str | None]] = {}
        self._futures: dict[str, tuple[Future[Any], str]] = {}
        self._routes: dict[str, Callable[[Any], WireReply]] = {
            "client/config": self._client_config,
            "client/dynamic_config": self._client_config,
            "create_session": self._create_session,
            "session_heartbeat": lambda body: WireReply.json({"type": "session_heartbeat"}),
            "telemetry": lambda body: WireReply.json({"status": "accepted"}),
            "healthz": lambda body: WireReply.json({"status": "ok"}),
            "get_server_capabilities": lambda body: WireReply.json(
                self.service.get_server_capabilities().model_dump(mode="json")
            ),
            "create_model": self._create_model,
            "get_info": self._get_info,
            "optim_step": self._optim_step,
            "save_weights": self._save_weights,
            "save_weights_for_sampler": self._save_weights_for_sampler,
            "load_weights": self._load_weights,
            "create_sampling_session": self._create_sampling_session,
            "asample": self._asample,
        }

    # -- entry point ------------------------------------------------------------------------

    def call(self, endpoint: str, body: bytes) -> WireReply:
        """Answer ``POST|GET /api/v1/<endpoint>``; 404 for an unknown endpoint, 400 with
        ``{"error", "field"}`` for a request rejected before any state changed."""
        try:
            if endpoint == "forward_backward":
                return self._forward_backward(body)
            if endpoint.startswith("sessions/") and endpoint.endswith("/finish"):
                return WireReply.json({})
            if endpoint.startswith("samplers/"):
                return self._get_sampler(endpoint.removeprefix("samplers/"))
            payload = json.loads(body) if body.strip() else {}
            if endpoint == "retrieve_future":
                return self._retrieve_future(payload)
            route = self._routes.get(endpoint)
            if route is None:
                return WireReply.json({"error": f"unknown endpoint /api/v1/{endpoint}"}, 404)
            return route(payload)
        except BadRequestError as exc:
            return WireReply.json({"error": str(exc), "field": exc.field, "category": "user"}, 400)
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            return WireReply.json({"error": f"malformed request: {exc}", "category": "user"}, 400)
        except NotFoundError as exc:
            return WireReply.json({"error": str(exc), "category": "user"}, 404)
        except TinkerError as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"}, 400)

    # -- sessions ---------------------------------------------------------------------------

    def _client_config(self, body: Any) -> WireReply:
        # The SDK's defaults, except plain httpx and uncompressed bodies.
        flags: dict[str, Any] = {"use_pyqwest_transport": False, "proto_compress_fwdbwd": False}
        if self.sdk_chunk_datums is not None:
            flags["fwdbwd_max_chunk_len"] = self.sdk_chunk_datums
        return WireReply.json(flags)

    def _create_session(self, body: Any) -> WireReply:
        session_id = f"session-{uuid.uuid4().hex[:12]}"
        return WireReply.json({"type": "create_session", "session_id": session_id})

    # -- training ---------------------------------------------------------------------------

    def _create_model(self, body: Any) -> WireReply:
        model_id = f"{body['session_id']}:train:{int(body['model_seq_id'])}"
        lora = body.get("lora_config") or {}

        def create() -> dict[str, str]:
            client = self.service.create_lora_training_client(
                base_model=body["base_model"],
                rank=int(lora.get("rank", 32)),
                seed=lora.get("seed"),
                train_mlp=bool(lora.get("train_mlp", True)),
                train_attn=bool(lora.get("train_attn", True)),
                train_unembed=bool(lora.get("train_unembed", True)),
                user_metadata=body.get("user_metadata"),
            ).result()
            self._register_model(model_id, client)
            return {"model_id": model_id, "type": "create_model"}

        return self._submit_call(create, "json")

    def _load_weights(self, body: Any) -> WireReply:
        path, with_optimizer = body["path"], bool(body.get("optimizer", False))
        if "model_id" in body and "session_id" not in body:
            raise BadRequestError(
                "model_id", "loading into an existing training client is not supported; create one from the checkpoint"
            )
        model_id = f"{body['session_id']}:train:{int(body['model_seq_id'])}"

        def load() -> dict[str, str]:
            if with_optimizer:
                client = self.service.create_training_client_from_state_with_optimizer(path).result()
            else:
                client = self.service.create_training_client_from_state(path).result()
            self._register_model(model_id, client)
            return {"model_id": model_id, "path": path, "type": "load_weights"}

        return self._submit_call(load, "json")

    def _get_info(self, body: Any) -> WireReply:
        return WireReply.json(self._model(body["model_id"]).get_info().model_dump(mode="json"))

    def _forward_backward(self, body: bytes) -> WireReply:
        call = wire.decode_forward_backward(body)
        client = self._model(call.model_id)

        def submit() -> APIFuture[ForwardBackwardOutput]:
            run = client.forward if call.forward_only else client.forward_backward
            return run(call.data, call.loss_fn, call.loss_fn_config)

        return self._in_order(call.model_id, call.seq_id, submit, "forward_backward")

    def _optim_step(self, body: Any) -> WireReply:
        client = self._model(body["model_id"])
        if body.get("optimizer_params") and not body.get("adam_params"):
            raise BadRequestError("optimizer_params", "only AdamW (adam_params) is part of tinker-std v0.1")
        params = AdamParams.model_validate(body.get("adam_params") or {})
        return self._in_order(body["model_id"], body.get("seq_id"), lambda: client.optim_step(params), "json")

    def _save_weights(self, body: Any) -> WireReply:
        client = self._model(body["model_id"])
        name, overwrite = body["path"], bool(body.get("overwrite", False))
        return self._in_order(
            body["model_id"], body.get("seq_id"), lambda: client.save_state(name, overwrite=overwrite), "json"
        )

    def _save_weights_for_sampler(self, body: Any) -> WireReply:
        client = self._model(body["model_id"])
        name = body.get("path")
        if name:
            overwrite = bool(body.get("overwrite", False))
            return self._in_order(
                body["model_id"],
                body.get("seq_id"),
                lambda: client.save_weights_for_sampler(name, overwrite=overwrite),
                "json",
            )

        def snapshot() -> APIFuture[dict[str, Any]]:
            sampler_future = client.save_weights_and_get_sampling_client()
            answer: Future[dict[str, Any]] = Future()

            def done(f: Future[SamplingClient]) -> None:
                error = f.exception()
                if error is not None:
                    answer.set_exception(error)
                    return
                sampler_id = self._register_sampler(f.result(), None)
                answer.set_result({"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"})

            sampler_future.future().add_done_callback(done)
            return APIFuture(answer)

        return self._in_order(body["model_id"], body.get("seq_id"), snapshot, "json")

    # -- sampling ---------------------------------------------------------------------------

    def _create_sampling_session(self, body: Any) -> WireReply:
        model_path, base_model = body.get("model_path"), body.get("base_model")
        client = self.service.create_sampling_client(model_path=model_path, base_model=base_model).result()
        sampler_id = self._register_sampler(client, model_path)
        return WireReply.json({"type": "create_sampling_session", "sampling_session_id": sampler_id})

    def _get_sampler(self, sampler_id: str) -> WireReply:
        client, model_path = self._sampler(sampler_id)
        return WireReply.json(
            {"sampler_id": sampler_id, "base_model": client.get_base_model(), "model_path": model_path}
        )

    def _asample(self, body: Any) -> WireReply:
        client, _ = self._sampler(body["sampling_session_id"])
        tokens = [t for chunk in body["prompt"]["chunks"] for t in _chunk_tokens(chunk)]
        params = SamplingParams.model_validate(
            {k: v for k, v in (body.get("sampling_params") or {}).items() if k in SamplingParams.model_fields}
        )
        num_samples = int(body.get("num_samples", 1))
        future = client.sample(
            ModelInput.from_ints(tokens),
            num_samples,
            params,
            include_prompt_logprobs=bool(body.get("prompt_logprobs") or False),
            topk_prompt_logprobs=int(body.get("topk_prompt_logprobs") or 0),
        )
        request_id = self._store(future.future(), "sample")
        ids = [f"{request_id}-{j}" for j in range(num_samples)]
        return WireReply.json({"request_id": request_id, "sample_sequence_ids": ids})

    # -- futures ----------------------------------------------------------------------------

    def _retrieve_future(self, body: Any) -> WireReply:
        request_id = body["request_id"]
        with self._lock:
            entry = self._futures.get(request_id)
        if entry is None:
            return WireReply.json({"error": f"unknown request_id {request_id!r}", "category": "user"}, 404)
        future, kind = entry
        try:
            result = future.result(timeout=LONG_POLL_S)
        except TimeoutError:
            return WireReply.json({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        except RequestFailedError as exc:
            return WireReply.json({"error": str(exc), "category": exc.category})
        except TinkerError as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "user"})
        except Exception as exc:
            return WireReply.json({"error": f"{type(exc).__name__}: {exc}", "category": "server"})
        if kind == "forward_backward":
            return WireReply(200, PROTOBUF, wire.encode_forward_backward_output(result))
        if kind == "sample":
            return WireReply(200, PROTOBUF, wire.encode_sample_response(result))
        return WireReply.json(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)

    def _store(self, future: Future[Any], kind: str) -> str:
        request_id = uuid.uuid4().hex
        with self._lock:
            self._futures[request_id] = (future, kind)
        return request_id

    def _submit_call(self, work: Callable[[], Any], kind: str) -> WireReply:
        """Run ``work`` on a thread of its own; its result is a future's result."""
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return WireReply.json({"request_id": self._store(future, kind)})

    def _in_order(self, model_id: str, seq_id: Any, submit: Callable[[], APIFuture[Any]], kind: str) -> WireReply:
        """Answer at once; submit to the model's client once every lower ``seq_id`` has been
        submitted (the SDK sends the first chunk of a call only after the others were accepted,
        so nothing may wait here). A request the client rejects still takes its turn, and its
        error becomes its future's result."""
        lane = self._lanes[model_id]
        answer: Future[Any] = Future()
        request_id = self._store(answer, kind)
        with lane.turn:
            if seq_id is None:
                _submit_into(submit, answer)
            else:
                if int(seq_id) < lane.next_seq or int(seq_id) in lane.waiting:
                    raise BadRequestError("seq_id", f"{seq_id} was already used by model {model_id}")
                lane.waiting[int(seq_id)] = (submit, answer)
                while lane.next_seq in lane.waiting:
                    _submit_into(*lane.waiting.pop(lane.next_seq))
                    lane.next_seq += 1
        return WireReply.json({"request_id": request_id, "model_id": model_id})

    # -- registries -------------------------------------------------------------------------

    def _register_model(self, model_id: str, client: TrainingClient) -> None:
        with self._lock:
            self._models[model_id] = client
            self._lanes[model_id] = _Lane()

    def _model(self, model_id: str) -> TrainingClient:
        with self._lock:
            client = self._models.get(model_id)
        if client is None:
            raise NotFoundError(f"no training model {model_id!r} on this server")
        return client

    def _register_sampler(self, client: SamplingClient, model_path: str | None) -> str:
        sampler_id = f"sampler-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._samplers[sampler_id] = (client, model_path)
        return sampler_id

    def _sampler(self, sampler_id: str) -> tuple[SamplingClient, str | None]:
        with self._lock:
            entry = self._samplers.get(sampler_id)
        if entry is None:
            raise NotFoundError(f"no sampling session {sampler_id!r} on this server")
        return entry


def _submit_into(submit: Callable[[], APIFuture[Any]], answer: Future[Any]) -> None:
    """Call ``submit`` (which hands a request to a client) and settle ``answer`` with its outcome."""
    try:
        submitted = submit().future()
    except Exception as exc:
        answer.set_exception(exc)
        return

    def settle(done: Future[Any]) -> None:
        error = done.exception()
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(done.result())

    submitted.add_done_callback(settle)


def _chunk_tokens(chunk: Any) -> list[int]:
    if chunk.get("type", "encoded_text") != "encoded_text":
        raise BadRequestError("prompt.chunks", f"{chunk.get('type')} chunks are not supported")
    return [int(t) for t in chunk["tokens"]]
