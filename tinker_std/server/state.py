"""What the server holds between requests: sessions, their training models and samplers, and the
reaper that releases idle sessions.

Every object belongs to the tenant of the key that created it; a lookup by another tenant is a
``NotFoundError``, exactly as for an object that does not exist. A lookup of a session, or of a
model of a session, counts as activity of that session (``idle_session_s`` is measured from the
last one). Model ids have the form ``"{session_id}:train:{model_seq_id}"`` (the SDK assumes it).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tinker_std.client.sampling import SamplingClient
from tinker_std.client.training import TrainingClient
from tinker_std.errors import ConflictError, NotFoundError

from .futures import new_request_id
from .lanes import SeqLane

__all__ = ["ServerState", "Session", "TrainingModel", "Sampler"]


@dataclass
class Session:
    tenant: str
    last_seen: float = field(default_factory=time.monotonic)
    models: set[str] = field(default_factory=set)
    samplers: set[str] = field(default_factory=set)
    #: what the SDK's ``CreateSessionRequest`` said about the session (``RestClient.get_session``)
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainingModel:
    """A training model as the SDK sees it: its client may be replaced by ``load_state``."""

    model_id: str
    tenant: str
    session_id: str
    digest: str  # of the create request, to answer its retries
    request_id: str
    lane: SeqLane
    client: TrainingClient | None = None

    def ready(self) -> TrainingClient:
        """The model's client; ``NotFoundError`` while it is still being created."""
        if self.client is None:
            raise NotFoundError(f"training model {self.model_id!r} is still being created")
        return self.client


@dataclass
class Sampler:
    tenant: str
    client: SamplingClient
    model_path: str | None
    base_model: str


class ServerState:
    """The registries of sessions, training models and samplers, behind one lock."""

    def __init__(self, idle_session_s: float | None = None, gap_timeout_s: float = 30.0) -> None:
        """``idle_session_s``: sessions without a request or heartbeat for this long are reaped
        (``reap_idle``). ``gap_timeout_s``: how long a model's requests wait for a ``seq_id``
        that never arrives (``SeqLane``)."""
        self.idle_session_s = idle_session_s
        self.gap_timeout_s = gap_timeout_s
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._models: dict[str, TrainingModel] = {}
        self._samplers: dict[str, Sampler] = {}

    # -- sessions ---------------------------------------------------------------------------

    def create_session(
        self,
        tenant: str,
        user_metadata: dict[str, str] | None = None,
        display_name: str | None = None,
        tags: list[str] | None = None,
    ) -> str:
        session_id = f"session-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._sessions[session_id] = Session(
                tenant, user_metadata=user_metadata, display_name=display_name, tags=list(tags or [])
            )
        return session_id

    def session(self, tenant: str, session_id: Any) -> Session:
        """``tenant``'s session ``session_id`` (now seen); ``NotFoundError`` otherwise."""
        with self._lock:
            session = self._sessions.get(str(session_id))
            if session is None or session.tenant != tenant:
                raise NotFoundError(f"no session {session_id!r} on this server")
            session.last_seen = time.monotonic()
            return session

    def has_session(self, session_id: str) -> bool:
        """Whether the session exists (any tenant); touches nothing."""
        with self._lock:
            return session_id in self._sessions

    def heartbeat(self, tenant: str, session_id: str) -> bool:
        """Mark ``tenant``'s session as seen; ``False`` if it is gone (or never was)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.tenant != tenant:
                return False
            session.last_seen = time.monotonic()
            return True

    def finish_session(self, tenant: str, session_id: str) -> None:
        """Release ``tenant``'s session, if it has one of that id."""
        with self._lock:
            session = self._sessions.get(session_id)
            owned = session is not None and session.tenant == tenant
        if owned:
            self.release_session(session_id)

    def sessions_of(self, tenant: str) -> dict[str, Session]:
        with self._lock:
            return {sid: s for sid, s in self._sessions.items() if s.tenant == tenant}

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Release every session idle for ``idle_session_s``; the ids reaped. A session with a
        model still being created is not idle (its creator waits for it, however long it takes)."""
        if self.idle_session_s is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [
                sid
                for sid, s in self._sessions.items()
                if now - s.last_seen >= self.idle_session_s and not self._creating(s)
            ]
        for session_id in idle:
            self.release_session(session_id)
        return idle

    def _creating(self, session: Session) -> bool:
        return any(self._models[m].client is None for m in session.models if m in self._models)

    def release_session(self, session_id: str) -> None:
        """Forget a session, release its models' clients and close their lanes."""
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

    # -- training models --------------------------------------------------------------------

    def claim_model(self, model_id: str, tenant: str, digest: str, session: Session) -> str | None:
        """Reserve ``model_id`` for a create request with body digest ``digest``: ``None`` when
        reserved now, the original request id for a retry of the same request;
        ``ConflictError`` if another request holds the id."""
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                if model.tenant == tenant and model.digest == digest:
                    return model.request_id
                raise ConflictError(f"model id {model_id!r} already exists")
            self._models[model_id] = TrainingModel(
                model_id,
                tenant,
                model_id.split(":train:")[0],
                digest,
                new_request_id(),
                SeqLane(model_id, self.gap_timeout_s),
            )
            session.models.add(model_id)
        return None

    def reserved_model(self, model_id: str) -> TrainingModel:
        """A model just reserved by ``claim_model`` (its client may not be attached yet)."""
        with self._lock:
            return self._models[model_id]

    def attach(self, model_id: str, client: TrainingClient) -> TrainingModel:
        """Give a reserved model its client; ``NotFoundError`` (and ``client`` released) if the
        model's session ended meanwhile."""
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                model.client = client
        if model is None:
            client.release()
            raise NotFoundError(f"the session of model {model_id!r} ended before the model was ready")
        return model

    def forget_model(self, model_id: str) -> None:
        """Drop a model whose creation failed, and stop its lane."""
        with self._lock:
            model = self._models.pop(model_id, None)
        if model is not None:
            model.lane.close()

    def model(self, tenant: str, model_id: Any) -> TrainingModel:
        """``tenant``'s training model ``model_id`` (its session now seen); ``NotFoundError``
        otherwise."""
        with self._lock:
            model = self._models.get(str(model_id))
            if model is None or model.tenant != tenant:
                raise NotFoundError(f"no training model {model_id!r} on this server")
            session = self._sessions.get(model.session_id)
            if session is not None:
                session.last_seen = time.monotonic()
        return model

    # -- samplers ---------------------------------------------------------------------------

    def register_sampler(self, tenant: str, session_id: str, client: SamplingClient, model_path: str | None) -> str:
        """Keep ``client`` as a new sampler of ``session_id``; its id."""
        sampler_id = f"sampler-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._samplers[sampler_id] = Sampler(tenant, client, model_path, client.get_base_model())
            session = self._sessions.get(session_id)
            if session is not None:
                session.samplers.add(sampler_id)
        return sampler_id

    def sampler(self, tenant: str, sampler_id: Any) -> Sampler:
        """``tenant``'s sampler ``sampler_id``; ``NotFoundError`` otherwise."""
        with self._lock:
            sampler = self._samplers.get(str(sampler_id))
        if sampler is None or sampler.tenant != tenant:
            raise NotFoundError(f"no sampling session {sampler_id!r} on this server")
        return sampler

    # -- shutdown ---------------------------------------------------------------------------

    def lane_depths(self) -> dict[str, int]:
        """Each training model's queue depth (``SeqLane.depth``), by model id."""
        with self._lock:
            models = list(self._models.values())
        return {model.model_id: model.lane.depth() for model in models}

    def close(self) -> None:
        """Stop every model's lane after the steps already queued."""
        with self._lock:
            lanes = [m.lane for m in self._models.values()]
        for lane in lanes:
            lane.close()
