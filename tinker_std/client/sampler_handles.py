"""Sampler handles: ``SamplingClient.get_sampler_handle`` / ``from_sampler_handle`` and pickling,
as in tinker 0.38, for an in-process backend.

A handle is URL-safe base64 of a small JSON object: the sampler id, where its weights come from
(``model_path``, ``base_model`` or a snapshot), the backend name and checkpoint folder, and a token
of the process that made it. It carries no weights and no credentials. Decoding it:

- in the process that made it, while that ``BackendSession`` lives: a new client of the same
  sampler (the backend frees the sampler when the last of them is garbage collected, SMP-19);
- in another process: a new sampler over the same weights from the same checkpoint folder, on a
  ``BackendSession`` of the same backend made once per process, for a checkpoint (``model_path``)
  or a base model; a snapshot's weights live only in the process that took it, so its handle is
  a ``NotFoundError`` elsewhere (save the weights with ``save_weights_for_sampler`` and pass the
  path instead).

This module knows sessions and sampler specs, not clients: ``SamplingClient`` (client/sampling.py)
builds clients from what ``parse_handle``, ``live_sampler`` and ``session_for`` return.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import json
import threading
import uuid
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from ..backend import SamplerSpec
from ..errors import BadRequestError, NotFoundError
from ..registry import create_backend
from .session import BackendSession

__all__ = [
    "SamplerHandle",
    "SamplerOrigin",
    "encode_handle",
    "live_sampler",
    "parse_handle",
    "release",
    "retain",
    "session_for",
]

PROCESS_TOKEN = uuid.uuid4().hex


@dataclass(frozen=True)
class SamplerOrigin:
    """Where a sampler's weights come from: a checkpoint path, a base model, or neither (a snapshot)."""

    model_path: str | None = None
    base_model: str | None = None


@dataclass(frozen=True)
class SamplerHandle:
    """A decoded handle (``parse_handle``)."""

    process: str
    session: int
    sampler_id: str
    backend: str
    checkpoint_dir: str | None
    record_stability_info: bool
    origin: SamplerOrigin


@dataclass
class _Live:
    session: weakref.ref[BackendSession]
    spec: SamplerSpec
    origin: SamplerOrigin
    clients: int = 0


_lock = threading.Lock()
_live: dict[tuple[int, str], _Live] = {}
_sessions: dict[tuple[str, str | None], BackendSession] = {}


def retain(session: BackendSession, spec: SamplerSpec, origin: SamplerOrigin) -> None:
    """One more live ``SamplingClient`` of ``spec.sampler_id`` on ``session``."""
    with _lock:
        entry = _live.setdefault((id(session), spec.sampler_id), _Live(weakref.ref(session), spec, origin))
        entry.clients += 1


def release(session: BackendSession, sampler_id: str) -> None:
    """A ``SamplingClient`` was collected; the backend may free the sampler once none is left."""
    with _lock:
        entry = _live.get((id(session), sampler_id))
        if entry is None:
            return
        entry.clients -= 1
        if entry.clients > 0:
            return
        del _live[(id(session), sampler_id)]
    session.release_sampler(sampler_id)


def encode_handle(session: BackendSession, spec: SamplerSpec, origin: SamplerOrigin, record: bool) -> str:
    """The handle of sampler ``spec`` of ``session`` (``record``: its ``record_stability_info``)."""
    store = getattr(session.backend, "checkpoint_store", None)
    payload = {
        "v": 1,
        "process": PROCESS_TOKEN,
        "service": id(session),
        "sampler_id": spec.sampler_id,
        "backend": session.backend_name,
        "checkpoint_dir": None if store is None else str(store.root),
        "record_stability_info": record,
        **asdict(origin),
    }
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def parse_handle(handle: Any) -> SamplerHandle:
    """``handle`` decoded; ``BadRequestError`` on ``handle`` if it is not one."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(str(handle).encode()))
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise ValueError("unknown handle version")
        return SamplerHandle(
            process=str(payload["process"]),
            session=int(payload["service"]),
            sampler_id=str(payload["sampler_id"]),
            backend=str(payload["backend"]),
            checkpoint_dir=payload.get("checkpoint_dir"),
            record_stability_info=bool(payload["record_stability_info"]),
            origin=SamplerOrigin(payload.get("model_path"), payload.get("base_model")),
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadRequestError("handle", f"not a tinker-std sampler handle: {exc}") from None


def live_sampler(handle: SamplerHandle) -> tuple[BackendSession, SamplerSpec, SamplerOrigin] | None:
    """The session, spec and origin of the sampler ``handle`` names, when it was made in this
    process and its session still lives; else ``None``."""
    if handle.process != PROCESS_TOKEN:
        return None
    with _lock:
        entry = _live.get((handle.session, handle.sampler_id))
        session = entry.session() if entry is not None else None
    if entry is None or session is None:
        return None
    return session, entry.spec, entry.origin


def session_for(handle: SamplerHandle) -> BackendSession:
    """This process's session of the handle's backend and checkpoint folder (made once, closed at
    exit), to rebuild a sampler of a checkpoint or base model; ``NotFoundError`` for a snapshot."""
    if handle.origin.model_path is None and handle.origin.base_model is None:
        raise NotFoundError(
            f"sampler {handle.sampler_id!r} is a snapshot whose weights lived only in the process that took it "
            "(or that ServiceClient was closed); pass a save_weights_for_sampler path instead"
        )
    key = (handle.backend, handle.checkpoint_dir)
    with _lock:
        session = _sessions.get(key)
        if session is None:
            options = {} if key[1] is None else {"checkpoint_dir": key[1]}
            session = _sessions[key] = BackendSession(create_backend(key[0], options))
            atexit.register(_close_quietly, session)
    return session


def _close_quietly(session: BackendSession) -> None:
    with contextlib.suppress(Exception):
        session.close()
