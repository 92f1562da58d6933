"""The container side of the Modal backend: the torch backend behind wire payloads.

``ContainerService`` is what a Modal container runs (``app.py``'s class builds one in
``@modal.enter`` and each ``@modal.method`` delegates to ``call``). It is plain Python with no
Modal import, so the same object runs in a cloud container and, through Modal's ``.local()``, in
the test process. It owns one ``TorchBackend`` (the one engine: its queue batches concurrent
requests of several clients, exactly as on ``torch``) on a private event loop; Modal's input
threads (``@modal.concurrent``) submit coroutines to that loop.

Every reply is an envelope ``{"instance": id, "result": ...}`` or ``{"instance": id, "error":
...}``. ``instance`` is fixed per container start, which lets the client tell "this container
never had your model" from "the container holding your model was replaced" (preemption or scale
down, see spec/notes/modal.md). Server-only side effects (committing and reloading the checkpoint
Volume) are callbacks the Modal class passes in, so the offline path does not call them.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tinker_std.client.runtime import EventLoopThread
from tinker_std.errors import BadRequestError, RequestFailedError

from . import wire
from .wire import Payload

__all__ = ["ContainerService", "ContainerStoppedError", "METHODS"]

T = TypeVar("T")

#: The backend-contract calls a container serves (each is one ``@modal.method`` of the app's class).
METHODS: tuple[str, ...] = (
    "get_server_capabilities",
    "tokenizer_files",
    "create_model",
    "load_model",
    "checkpoint_base_model",
    "release_model",
    "forward_backward",
    "optim_step",
    "read_state",
    "save_state",
    "save_weights_for_sampler",
    "create_sampler",
    "release_sampler",
    "sample",
)

#: How long ``close`` lets the engine finish what was submitted before it stops the loop regardless.
_CLOSE_TIMEOUT_S = 120.0

_ENGINE_OPTIONS = frozenset({"dtype", "device", "models", "max_context_length", "batching"})


def _no_op() -> None:
    return None


class ContainerStoppedError(RequestFailedError):
    """A call reached a container whose service was already stopped (``close``: ``@modal.exit``,
    or in tests a ``LocalHandle`` restart or close). Its in-memory state is gone; nothing ran."""

    def __init__(self, call: str) -> None:
        super().__init__(f"{call}: the container was stopped before the call ran, so nothing ran", category="server")


class ContainerService:
    """One container's engine: a ``TorchBackend`` whose calls arrive as wire payloads.

    ``base_model`` (may be empty) is loaded at construction, so the first request does not pay
    for it. ``checkpoint_dir`` is the root of the checkpoint store (the Volume's mount point in a
    container). ``engine_options`` go to ``TorchBackend`` (only ``dtype``, ``device``, ``models``,
    ``max_context_length`` and ``batching``). ``after_write`` runs after every checkpoint is
    written (the Volume commit); ``before_read`` before a checkpoint is read (the Volume reload).
    """

    def __init__(
        self,
        *,
        base_model: str,
        checkpoint_dir: str,
        engine_options: dict[str, Any],
        after_write: Callable[[], None] = _no_op,
        before_read: Callable[[], None] = _no_op,
    ) -> None:
        unknown = set(engine_options) - _ENGINE_OPTIONS
        if unknown:
            raise TypeError(f"unknown engine options {sorted(unknown)}; known: {sorted(_ENGINE_OPTIONS)}")
        from ..torch import TorchBackend

        self.instance_id = uuid.uuid4().hex[:12]
        self.base_model = base_model
        self._after_write = after_write
        self._before_read = before_read
        self._loop = EventLoopThread("tinker-std-modal-container")
        # Calls and close() agree under this lock: a call either is submitted (and then close()
        # lets it finish, or fails it) or sees the container stopped; never one left waiting on a
        # loop that stopped before running it (a finalizer's release_sampler racing the backend's
        # close once hung interpreter exit: concurrent.futures joins the thread that waits).
        self._state_lock = threading.Lock()
        self._stopped = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self.backend = TorchBackend(checkpoint_dir=checkpoint_dir, **engine_options)
        self._run(self.backend.start())
        if base_model:  # load the base weights once per container (through the public contract)
            sampler = self._run(self.backend.create_sampler(base_model=base_model))
            self._run(self.backend.release_sampler(sampler.sampler_id))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result on the container loop; ``ContainerStoppedError`` (and ``coro`` never
        runs) once ``close`` has begun, or if the loop stopped before running it."""
        with self._state_lock:
            if self._stopped:
                coro.close()
                raise ContainerStoppedError(getattr(coro, "__qualname__", "the call"))
            future = self._loop.submit(coro).future()
            self._pending.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ContainerStoppedError(getattr(coro, "__qualname__", "the call")) from None
        finally:
            with self._state_lock:
                self._pending.discard(future)

    def close(self) -> None:
        """Stop the engine and its loop (``@modal.exit``). Calls already submitted run first (the
        engine's queue is FIFO and ``backend.close`` queues behind them); later calls raise
        ``ContainerStoppedError`` at once; any call the stopped loop did not run is failed, so
        no caller waits forever. Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            closing = self._loop.submit(self.backend.close()).future()
        try:
            closing.result(timeout=_CLOSE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            pass  # an engine call that does not end: stop the loop anyway, its callers are failed below
        finally:
            self._loop.stop()
            with self._state_lock:
                left = list(self._pending)
            for future in left:
                future.cancel()

    def call(self, method: str, payload: Payload) -> Payload:
        """Run one contract call; never raises: errors come back in the envelope."""
        try:
            if method not in METHODS:
                raise BadRequestError("method", f"unknown method {method!r}; known: {list(METHODS)}")
            result = getattr(self, f"_{method}")(payload)
        except BaseException as exc:  # every failure crosses as a typed error, never a bare traceback
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return {"instance": self.instance_id, "error": wire.encode_error(exc)}
        return {"instance": self.instance_id, "result": result}

    # -- handlers: payload in, payload out ------------------------------------------------------

    def _get_server_capabilities(self, payload: Payload) -> Payload:
        return wire.encode_capabilities(self._run(self.backend.get_server_capabilities()))

    def _tokenizer_files(self, payload: Payload) -> Payload:
        """The tokenizer of ``base_model`` as files (``save_pretrained``), so the client loads it locally."""
        tokenizer: Any = self.backend.get_tokenizer(payload["base_model"])
        with tempfile.TemporaryDirectory(prefix="tinker-std-tokenizer-") as tmp:
            tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
        return {"files": files}

    def _create_model(self, payload: Payload) -> Payload:
        spec = self._run(self.backend.create_model(payload["base_model"], wire.decode_lora(payload["lora"])))
        return wire.encode_model_spec(spec)

    def _load_model(self, payload: Payload) -> Payload:
        self._before_read()
        path = wire.decode_path(payload["path"])
        spec = self._run(self.backend.load_model(path, bool(payload["with_optimizer"])))
        return wire.encode_model_spec(spec)

    def _checkpoint_base_model(self, payload: Payload) -> Payload:
        """The base model a checkpoint was trained on (read from its metadata on the Volume)."""
        self._before_read()
        meta = self.backend.checkpoint_store.read_metadata(wire.decode_path(payload["path"]))
        return {"base_model": str(meta["base_model"])}

    def _release_model(self, payload: Payload) -> Payload:
        self._run(self.backend.release_model(payload["model_id"]))
        return {}

    def _forward_backward(self, payload: Payload) -> Payload:
        output = self._run(
            self.backend.forward_backward(
                payload["model_id"],
                wire.decode_datums(payload["data"]),
                payload["loss_fn"],
                dict(payload["loss_fn_config"]),
                bool(payload["backward"]),
            )
        )
        return wire.encode_forward_backward_output(output)

    def _optim_step(self, payload: Payload) -> Payload:
        response = self._run(self.backend.optim_step(payload["model_id"], wire.decode_adam(payload["params"])))
        return {"metrics": response.metrics}

    def _read_state(self, payload: Payload) -> Payload:
        return wire.encode_adapter_state(self._run(self.backend.read_state(payload["model_id"])))

    def _save_state(self, payload: Payload) -> Payload:
        path = wire.decode_path(payload["path"])
        self._run(self.backend.save_state(payload["model_id"], path, bool(payload["overwrite"])))
        self._after_write()
        return {}

    def _save_weights_for_sampler(self, payload: Payload) -> Payload:
        path = wire.decode_path(payload["path"])
        self._run(self.backend.save_weights_for_sampler(payload["model_id"], path, bool(payload["overwrite"])))
        self._after_write()
        return {}

    def _create_sampler(self, payload: Payload) -> Payload:
        model_path = None
        if payload.get("model_path") is not None:
            self._before_read()
            model_path = wire.decode_path(payload["model_path"])
        spec = self._run(
            self.backend.create_sampler(
                base_model=payload.get("base_model"), model_path=model_path, model_id=payload.get("model_id")
            )
        )
        return wire.encode_sampler_spec(spec)

    def _release_sampler(self, payload: Payload) -> Payload:
        self._run(self.backend.release_sampler(payload["sampler_id"]))
        return {}

    def _sample(self, payload: Payload) -> Payload:
        request = wire.decode_sample_request(payload["request"])
        return wire.encode_sample_response(self._run(self.backend.sample(payload["sampler_id"], request)))


def committing_torch_backend(after_write: Callable[[], None], **options: Any) -> Any:
    """A torch backend that calls ``after_write`` (the Volume commit) after every checkpoint it
    writes, for containers that serve it directly (``web.py``'s HTTP endpoint). Float32 gets
    ``TorchBackendFP32``'s capabilities, anything else ``TorchBackendBF16``'s (a GPU container)."""
    from ..torch import TorchBackendBF16, TorchBackendFP32

    base: type[Any] = TorchBackendFP32 if str(options.get("dtype", "")).endswith("float32") else TorchBackendBF16

    class CommittingTorchBackend(base):  # type: ignore[misc]
        async def save_state(self, model_id: str, path: Any, overwrite: bool) -> None:
            await super().save_state(model_id, path, overwrite)
            after_write()

        async def save_weights_for_sampler(self, model_id: str, path: Any, overwrite: bool) -> None:
            await super().save_weights_for_sampler(model_id, path, overwrite)
            after_write()

    return CommittingTorchBackend(**options)
