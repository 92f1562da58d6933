"""The Tinker HTTP API over a tinker-std ``ServiceClient``: the routes, and the state they share.

``WireService(service)`` assembles the server's parts and declares its routes (``endpoints``);
the transport (``asgi.py``) serves them. Requests go through the same client layer as in-process
use, so validation, ordering and errors are the library's:

- ``session_routes``: client configuration, sessions, heartbeats, health, capabilities;
- ``training_routes``: training models, strictly in the SDK's ``seq_id`` order per model;
- ``custom_loss_routes``: uploaded custom losses (``create_custom_loss``, spec 12) and the
  ``forward_backward`` requests that run them;
- ``sampling_routes``: sampling sessions and ``asample``;
- ``futures``: every asynchronous operation answers ``{"request_id": ...}`` at once and its
  result is fetched with ``retrieve_future`` (a long poll): protobuf for
  ``ForwardBackwardOutput`` / ``SampleResponse``, JSON otherwise;
- ``rest_routes``: the SDK's ``RestClient`` over the server's records; ``refusals``: what the
  server refuses on purpose;
- ``state``: sessions, models and samplers of each tenant, and the reaper of idle sessions;
- ``failures``: the one mapping from an error to its wire answer (``"<Type>: <message>"``,
  category ``user`` for tinker-std's typed errors and ``server`` for anything else).

A session, its models, samplers, request ids and checkpoints belong to the tenant of the key that
created them; any other tenant gets 404 (``NotFoundError``) for them.
"""

from __future__ import annotations

from tinker_std.client.service import ServiceClient

from .checkpoint_files import CheckpointFiles
from .custom_loss_routes import CustomLossRoutes
from .external_weights import ExternalWeights
from .futures import DEFAULT_MAX_QUEUED_PER_TENANT, RESULT_TTL_S, FutureStore
from .messages import Endpoint, WireReply, WireRequest
from .records import ServerRecords
from .refusals import refusal_endpoints
from .rest_routes import RestRoutes
from .sampling_routes import SamplingRoutes
from .session_routes import SessionRoutes
from .state import ServerState
from .training_routes import TrainingRoutes

__all__ = ["WireReply", "WireRequest", "WireService"]


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
        max_body_bytes: int = 64 * 1024 * 1024,
        max_queued_per_tenant: int = DEFAULT_MAX_QUEUED_PER_TENANT,
        result_ttl_s: float = RESULT_TTL_S,
    ) -> None:
        """``sdk_chunk_datums``: tell the SDK to send at most this many datums per
        ``forward_backward`` request (its default is 1024); each chunk is a request of its own.
        ``records``: where runs and checkpoints are recorded (default: in memory).
        ``compress_requests``: ask the SDK for zstd ``forward_backward`` bodies.
        ``idle_session_s``: sessions without a request or heartbeat for this long are reaped
        (``reap``) and their models and samplers released. ``gap_timeout_s``: how long later
        requests wait for a ``seq_id`` that never arrives (``SeqLane``). ``max_body_bytes``: the
        transport's body limit, which the SDK is told to keep its chunks under.
        ``max_queued_per_tenant``: each key's quota of unfinished requests (LIM-6).
        ``result_ttl_s``: how long a finished request's result can be retrieved (``FutureStore``)."""
        self.service = service
        self.records = records or ServerRecords()
        self.state = ServerState(idle_session_s, gap_timeout_s)
        self.futures = FutureStore(max_queued_per_tenant, result_ttl_s)
        self.checkpoints = CheckpointFiles(service, self.records)
        self.sessions = SessionRoutes(service, self.state, sdk_chunk_datums, compress_requests, max_body_bytes)
        self.external = ExternalWeights(service, self.records, self.checkpoints)
        self.custom_losses = CustomLossRoutes(self.state, self.futures)
        self.training = TrainingRoutes(
            service,
            self.state,
            self.futures,
            self.records,
            self.checkpoints,
            self.external,
            custom_losses=self.custom_losses,
        )
        self.sampling = SamplingRoutes(service, self.state, self.futures, self.checkpoints)
        self.rest = RestRoutes(self.records, self.state, self.checkpoints)
        self.closing = False

    def endpoints(self) -> list[Endpoint]:
        """Every route of the API, in matching order (the refusals before the REST routes whose
        parameters they would otherwise fill)."""
        return [
            *self.sessions.endpoints(),
            *self.training.endpoints(),
            *self.custom_losses.endpoints(),
            *self.sampling.endpoints(),
            Endpoint("retrieve_future", self.futures.retrieve, async_handler=self.futures.retrieve_async),
            *refusal_endpoints(),
            *self.rest.endpoints(),
        ]

    def reap(self) -> None:
        """Release idle sessions, delete expired checkpoints and write the runs' request times
        (the reaper's tick)."""
        self.state.reap_idle()
        self.checkpoints.delete_expired()
        self.records.flush()

    def close(self) -> None:
        """Fail every unfinished future with ``ServerShutdown`` (their long polls answer at once),
        stop the models' lanes, close the records. From the first moment of ``close`` on, every
        request is answered with ``ServerShutdown`` (503, retryable), never a 500."""
        self.closing = True
        self.futures.close()
        self.state.close()
        self.records.close()
