"""Ways for the client to reach a ``TinkerStdTrainer``: deployed, ephemeral, or in-process.

A *handle* is what ``ModalBackend`` calls: ``handle.<method>.remote(payload)`` and
``handle.<method>.spawn(payload)`` (returning a call with ``.get(timeout)``). Modal's own objects
(``modal.Cls.from_name(...)(...)``, or the app's class inside ``app.run()``) are such handles.
``LocalHandle`` is the offline one: the real Modal class through Modal's ``.local()`` path, in
this process, with every argument and result pickled on the way (as Modal's transport does), so
tests exercise the same class, the same payloads and the same serialisation as a cloud call.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from .service import ContainerStoppedError
from .settings import CLASS_NAME
from .wire import Payload, check_plain

__all__ = ["Call", "Method", "Handle", "HandleFactory", "DeployedApp", "EphemeralApp", "LocalApp", "LocalHandle"]


class Call(Protocol):
    """A spawned call (``modal.FunctionCall``)."""

    def get(self, timeout: float | None = None) -> Payload: ...


class Method(Protocol):
    """One ``@modal.method`` of a class instance."""

    def remote(self, payload: Payload) -> Payload: ...

    def spawn(self, payload: Payload) -> Call: ...


class Handle(Protocol):
    """An instance of the class, for one base model; attribute access gives its methods."""

    def __getattr__(self, name: str) -> Method: ...


class HandleFactory(Protocol):
    """Where handles come from: one per ``(base_model, engine_options)``."""

    def open(self) -> None: ...

    def handle(self, base_model: str, checkpoint_dir: str, engine_options: str) -> Any: ...

    def close(self) -> None: ...


def _options(cls: Any, gpu: str | None, region: str | None) -> Any:
    overrides: dict[str, Any] = {}
    if gpu is not None:
        overrides["gpu"] = gpu
    if region is not None:
        overrides["region"] = region
    return cls.with_options(**overrides) if overrides else cls


class DeployedApp:
    """The class of an app deployed with ``tinker-std modal deploy`` (``modal.Cls.from_name``)."""

    def __init__(self, app_name: str, gpu: str | None, region: str | None, environment_name: str | None) -> None:
        self.app_name, self.gpu, self.region, self.environment_name = app_name, gpu, region, environment_name
        self._cls: Any = None

    def open(self) -> None:
        import modal

        cls = modal.Cls.from_name(self.app_name, CLASS_NAME, environment_name=self.environment_name)
        self._cls = _options(cls, self.gpu, self.region)

    def handle(self, base_model: str, checkpoint_dir: str, engine_options: str) -> Any:
        return self._cls(base_model=base_model, checkpoint_dir=checkpoint_dir, engine_options=engine_options)

    def close(self) -> None:
        self._cls = None


class EphemeralApp:
    """The package's app run for the lifetime of the client (``app.run()``), stopped on close."""

    def __init__(self, gpu: str | None, region: str | None) -> None:
        self.gpu, self.region = gpu, region
        self._stack = contextlib.ExitStack()
        self._cls: Any = None

    def open(self) -> None:
        import modal

        from . import app

        self._stack.enter_context(modal.enable_output())
        self._stack.enter_context(app.app.run())
        self._cls = _options(app.TinkerStdTrainer, self.gpu, self.region)

    def handle(self, base_model: str, checkpoint_dir: str, engine_options: str) -> Any:
        return self._cls(base_model=base_model, checkpoint_dir=checkpoint_dir, engine_options=engine_options)

    def close(self) -> None:
        self._stack.close()


def _transport(value: Payload) -> Payload:
    """What Modal's transport does to a payload: serialise, deserialise (here with pickle, after
    checking that only plain data is sent)."""
    check_plain(value)
    result: Payload = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return result


class _LocalCall:
    def __init__(self, future: Future[Payload]) -> None:
        self._future = future

    def get(self, timeout: float | None = None) -> Payload:
        return self._future.result(timeout)


class _LocalMethod:
    def __init__(self, handle: LocalHandle, name: str) -> None:
        self._handle, self._name = handle, name

    def _call(self, payload: Payload) -> Payload:
        method = getattr(self._handle.instance(), self._name)
        with warnings.catch_warnings():  # "executing locally ... no access to the mounted Volume": intended
            warnings.filterwarnings("ignore", message=".*executing locally.*", category=UserWarning)
            return _transport(method.local(_transport(payload)))

    def remote(self, payload: Payload) -> Payload:
        return self._call(payload)

    def spawn(self, payload: Payload) -> _LocalCall:
        return _LocalCall(self._handle.executor.submit(self._call, payload))


class LocalHandle:
    """The real ``TinkerStdTrainer`` run in-process through ``.local()``: one instance (one
    ``@modal.enter``) shared by every call, like one warm container. Spawned calls run on a pool
    of ``max_inputs`` threads, as ``@modal.concurrent`` inputs do. ``restart()`` drops the
    instance, as a preempted or scaled-down container does: the next call starts a new one."""

    def __init__(self, base_model: str, checkpoint_dir: str, engine_options: str, max_inputs: int) -> None:
        self.params = {"base_model": base_model, "checkpoint_dir": checkpoint_dir, "engine_options": engine_options}
        self.executor = ThreadPoolExecutor(max_workers=max_inputs, thread_name_prefix="tinker-std-modal-local")
        self._lock = threading.Lock()
        self._instance: Any = None
        self._closed = False

    def instance(self) -> Any:
        """The running instance, started on first use; after ``close`` a ``ContainerStoppedError``
        (a late call, e.g. a finalizer's release, must not start a new container)."""
        with self._lock:
            if self._closed:
                raise ContainerStoppedError(f"a call to the closed container of {self.params['base_model']!r}")
            if self._instance is None:
                from .app import TinkerStdTrainer

                instance = TinkerStdTrainer(**self.params)
                # A container runs @modal.enter once, before any input; .local() would run it in
                # every thread that arrives first at once, so enter here, under the lock, with a
                # cheap first call.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*executing locally.*", category=UserWarning)
                    instance.get_server_capabilities.local({})
                self._instance = instance
            return self._instance

    def restart(self) -> None:
        """Lose the container: its service (engine, adapters, optimizer state) is closed and gone."""
        with self._lock:
            old, self._instance = self._instance, None
        if old is not None and old._entered:  # .local() never runs @modal.exit; do what it (stop) does
            old._cached_user_cls_instance().service.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.executor.shutdown(wait=True)
        self.restart()

    def __getattr__(self, name: str) -> _LocalMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _LocalMethod(self, name)


class LocalApp:
    """Offline handles: each base model gets its own ``LocalHandle`` (its own "container")."""

    def __init__(self, max_inputs: int = 8) -> None:
        self.max_inputs = max_inputs
        self.handles: dict[tuple[str, str, str], LocalHandle] = {}

    def open(self) -> None:
        return None

    def handle(self, base_model: str, checkpoint_dir: str, engine_options: str) -> LocalHandle:
        key = (base_model, checkpoint_dir, engine_options)
        if key not in self.handles:
            self.handles[key] = LocalHandle(base_model, checkpoint_dir, engine_options, self.max_inputs)
        return self.handles[key]

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
