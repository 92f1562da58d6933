"""``ttl_seconds`` and ``user_metadata`` in process (spec CKPT-13).

A backend whose checkpoints live in a local ``CheckpointStore`` applies them: a save's TTL and
metadata are recorded in its ``checkpoint.json`` (``CheckpointStore.annotate``: the checkpoint is
deleted once expired, never listed or loaded after), a training run's metadata in ``run.json``.
Any other backend refuses a value other than ``None`` with a ``BadRequestError`` naming the field,
since nothing would apply it (SDK-1). Values are checked when the method is called, before any
state changes.
"""

from __future__ import annotations

import time
from typing import Any

from ..checkpoints import CheckpointStore
from ..errors import BadRequestError
from .session import BackendSession

__all__ = ["check_ttl", "check_user_metadata", "local_store", "expiry"]


def local_store(session: BackendSession) -> CheckpointStore | None:
    store = getattr(session.backend, "checkpoint_store", None)
    return store if isinstance(store, CheckpointStore) else None


def check_ttl(session: BackendSession, ttl_seconds: Any) -> None:
    """``BadRequestError`` naming ``ttl_seconds`` unless it is ``None`` or a positive int that
    this backend can apply."""
    if ttl_seconds is None:
        return
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise BadRequestError("ttl_seconds", f"must be a positive integer (seconds) or None, got {ttl_seconds!r}")
    if local_store(session) is None:
        raise BadRequestError(
            "ttl_seconds", f"backend {session.backend_name!r} keeps no local checkpoint store to expire it"
        )


def check_user_metadata(session: BackendSession, user_metadata: Any) -> None:
    """``BadRequestError`` naming ``user_metadata`` unless it is ``None`` or a ``dict[str, str]``
    that this backend can keep."""
    if user_metadata is None:
        return
    if not isinstance(user_metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in user_metadata.items()
    ):
        raise BadRequestError("user_metadata", f"must be a dict of str to str, got {user_metadata!r}")
    if local_store(session) is None:
        raise BadRequestError(
            "user_metadata", f"backend {session.backend_name!r} keeps no local checkpoint store to record it"
        )


def expiry(ttl_seconds: int | None) -> float | None:
    return None if ttl_seconds is None else time.time() + ttl_seconds
