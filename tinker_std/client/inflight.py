"""Inflight samplers: ``save_weights_and_get_sampling_client(kind="inflight")`` (spec INF).

Every training client has one inflight target: the weights its inflight samplers serve. An
inflight save is a request in the training client's order (ORD-1) that takes a snapshot of the
adapter at its position (the same backend call as a snapshot sampler, ORD-13) and publishes it as
the target's newest weights (INF-1). Every inflight sampler of that training client, old or new,
reads the target when a sample request is submitted and runs the request on the snapshot published
last (INF-2); nothing else moves the target, ``optim_step`` included (INF-3).

Built on snapshot samplers, this works on every backend that has them (SMP-14): no backend code
and no capability. A superseded snapshot is freed by the backend once the last request pinned to
it has run and nothing refers to it (SMP-19).
"""

from __future__ import annotations

import threading
from typing import Any

from ..backend import SamplerSpec
from ..errors import BadRequestError
from .sampler_handles import SamplerOrigin
from .sampling import SamplingClient
from .session import BackendSession

__all__ = ["SAMPLER_KINDS", "InflightSamplingClient", "InflightTarget", "check_sampler_kind"]

#: The SDK's ``SamplingClientKind`` values.
SAMPLER_KINDS = ("snapshot", "inflight")


def check_sampler_kind(kind: Any) -> str:
    """``kind`` if it is a ``SamplingClientKind``, else a ``BadRequestError`` naming it (INF-6)."""
    if not isinstance(kind, str) or kind not in SAMPLER_KINDS:
        raise BadRequestError("kind", f"must be 'snapshot' or 'inflight', got {kind!r}")
    return kind


class InflightTarget:
    """The newest weights published by one training client's inflight saves (thread safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: SamplingClient | None = None
        self._version = 0

    def publish(self, snapshot: SamplingClient) -> int:
        """Make ``snapshot`` the weights every inflight sampler serves from now on; returns its
        version (1, 2, ... in publication order)."""
        with self._lock:
            self._current = snapshot
            self._version += 1
            return self._version

    def current(self) -> SamplingClient:
        """The snapshot published last (an inflight sampler exists only after a publication)."""
        with self._lock:
            if self._current is None:
                raise RuntimeError("no inflight weights were published yet")
            return self._current

    @property
    def version(self) -> int:
        with self._lock:
            return self._version


class InflightSamplingClient(SamplingClient):
    """A ``SamplingClient`` whose requests run on its training client's newest inflight weights.

    Each ``sample`` / ``compute_logprobs`` request is pinned, when it is submitted, to the snapshot
    the target holds then (INF-2); ``spec`` is the snapshot this client was created with and only
    describes the model (base model, context length), which publications do not change.

    Sampler handles and pickling are refused (a ``BadRequestError`` naming ``kind``): the target
    lives in the training client's process, and a copy elsewhere could not follow it (INF-7)."""

    def __init__(
        self, session: BackendSession, target: InflightTarget, spec: SamplerSpec, record_stability_info: bool
    ) -> None:
        # Not SamplingClient.__init__: this client owns no backend sampler; the target's snapshots do.
        self.session = session
        self.spec = spec
        self.record_stability_info = bool(record_stability_info)
        self.origin = SamplerOrigin()
        self.target = target

    def _serving(self) -> SamplingClient:
        return self.target.current()

    def get_sampler_handle(self) -> str:
        raise BadRequestError(
            "kind", "an inflight sampler has no handle: its weights follow a training client in this process"
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.get_sampler_handle()  # type: ignore[return-value]  # always raises
