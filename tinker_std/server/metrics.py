"""Prometheus metrics of one server app, served at ``GET /metrics`` (docs/server.md, "Metrics").

Each app has its own ``CollectorRegistry`` (never the process-wide default), so several servers in
one process (the tests) count apart. ``install_metrics(app)`` wires it in:

- ``MetricsMiddleware``, outermost, counts every HTTP request, its latency and its error answer.
  The ``endpoint`` label is the matching route's path below ``/api/v1/``, path parameters as
  ``{name}`` (``unmatched`` for a path no route declares), so its values are bounded. An *error*
  is a JSON answer carrying ``"error"``: a refusal (4xx/5xx) or a failed future delivered by
  ``retrieve_future`` (HTTP 200); ``error_type`` is the wire error's type name (``BadRequestError``,
  ``NotFoundError``, ...), or ``HTTP<status>`` where the answer names none;
- an observer of the ``FutureStore`` counts the tokens of every finished ``forward_backward``
  / ``forward`` (target positions of each datum) and ``sample`` (sampled tokens of each sequence)
  per tenant; a rate over them is tokens/s;
- a collector reads, at scrape time, each training model's queue (``SeqLane.depth``) and the
  unfinished futures by kind.

``/metrics`` asks for the same key as the API (``X-API-Key``, or ``Authorization: Bearer <key>``,
which is what Prometheus' ``authorization`` setting sends); a server without keys serves it open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinker_std.types import ForwardBackwardOutput, SampleResponse

from .futures import Pending
from .middleware import PREFIX
from .operations import WireService

__all__ = ["LATENCY_BUCKETS", "METRICS_PATH", "MetricsMiddleware", "ServerMetrics", "install_metrics"]

METRICS_PATH = "/metrics"
#: seconds; from a cheap JSON call to a retrieve_future long poll (20 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
_ERROR_BODY_LIMIT = 64 * 1024  # an error answer is a small JSON object; larger answers are not parsed


class ServerMetrics:
    """The counters and histograms of one server, in their own registry."""

    def __init__(self, operations: WireService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tinker_std_requests",
            "HTTP requests answered, by endpoint, method, status and tenant",
            ["endpoint", "method", "status", "tenant"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tinker_std_request_errors",
            "Answers carrying an error (refusals and failed futures), by endpoint, error type and tenant",
            ["endpoint", "error_type", "tenant"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tinker_std_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.training_tokens = Counter(
            "tinker_std_training_tokens",
            "Target positions of finished forward_backward and forward requests, by tenant",
            ["tenant"],
            registry=self.registry,
        )
        self.sampled_tokens = Counter(
            "tinker_std_sampled_tokens",
            "Tokens of the sequences of finished sample requests, by tenant",
            ["tenant"],
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(operations))
        operations.futures.observers.append(self.observe_future)

    def observe_future(self, pending: Pending) -> None:
        """Count ``pending``'s tokens once its future has a result (failures count none)."""

        def finished(future: Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            result = future.result()
            if isinstance(result, ForwardBackwardOutput):
                tokens = sum(_positions(out) for out in result.loss_fn_outputs)
                self.training_tokens.labels(pending.tenant).inc(tokens)
            elif isinstance(result, SampleResponse):
                self.sampled_tokens.labels(pending.tenant).inc(sum(len(s.tokens) for s in result.sequences))

        pending.future.add_done_callback(finished)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return bytes(generate_latest(self.registry))


def _positions(output: dict[str, Any]) -> int:
    tensor = output.get("logprobs") or next(iter(output.values()), None)
    if tensor is None:
        return 0
    return int(tensor.shape[0]) if tensor.shape else len(tensor.data)


class _QueueCollector(Collector):
    """Gauges read at scrape time: each training model's queue and the unfinished futures."""

    def __init__(self, operations: WireService) -> None:
        self.operations = operations

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "tinker_std_queue_depth",
            "Requests of a training model admitted and not yet started (waiting for their turn)",
            labels=["model"],
        )
        for model_id, value in sorted(self.operations.state.lane_depths().items()):
            depth.add_metric([model_id], value)
        yield depth
        unfinished = GaugeMetricFamily(
            "tinker_std_unfinished_requests",
            "Requests whose result is not there yet, by kind (forward_backward, sample, json)",
            labels=["kind"],
        )
        counts = {"forward_backward": 0, "sample": 0, "json": 0}
        for pending in self.operations.futures.pending():
            if not pending.future.done():
                counts[pending.kind] = counts.get(pending.kind, 0) + 1
        for kind, value in counts.items():
            unfinished.add_metric([kind], value)
        yield unfinished


class MetricsMiddleware:
    """Counts each HTTP request (pure ASGI; reads no request body, buffers only small JSON answers)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        self._series: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "json": False, "body": b""}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                headers = {k.decode("latin-1").lower(): v for k, v in message.get("headers", [])}
                answer["json"] = headers.get("content-type", b"").startswith(b"application/json")
            elif message["type"] == "http.response.body" and answer["json"]:
                if len(answer["body"]) < _ERROR_BODY_LIMIT:
                    answer["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            endpoint = _endpoint(self.routes, scope)
            tenant = str(scope.get("state", {}).get("tenant") or "")
            status = int(answer["status"])
            key = (endpoint, scope["method"], status, tenant)
            series = self._series.get(key)
            if series is None:  # labels() costs a lock and a validation per call: once per label set
                series = self._series[key] = (
                    self.metrics.requests.labels(endpoint, scope["method"], str(status), tenant),
                    self.metrics.latency.labels(endpoint),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)
            error_type = _error_type(status, answer["body"] if answer["json"] else b"")
            if error_type is not None:
                self.metrics.errors.labels(endpoint, error_type, tenant).inc()


def _endpoint(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route for ``scope`` below ``/api/v1/`` (``unmatched`` if none),
    found by matching, so a request refused before routing (401, 413) is still labelled (a routed
    request's route is the one the router left in ``scope["route"]``)."""
    routed = scope.get("route")
    if isinstance(routed, Route):
        return routed.path[len(PREFIX) :] if routed.path.startswith(PREFIX) else routed.path
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE and isinstance(route, Route):
            return route.path[len(PREFIX) :] if route.path.startswith(PREFIX) else route.path
    return "unmatched"


def _error_type(status: int, body: bytes) -> str | None:
    """The wire error's type name if the answer is an error, else ``None``."""
    error: object = None
    if body and len(body) < _ERROR_BODY_LIMIT and b'"error"' in body:  # most answers are not errors: not parsed
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            error = decoded.get("error")
    if isinstance(error, str) and error:
        name = error.split(":", 1)[0].strip()
        return name if name.isidentifier() else f"HTTP{status}"
    return f"HTTP{status}" if status >= 400 else None


def install_metrics(app: Starlette) -> ServerMetrics:
    """Give ``app`` (made by ``asgi.create_app``) its metrics: the middleware, outermost, and the
    ``GET /metrics`` route, behind the API's keys. Call before the app serves its first request."""
    operations: WireService = app.state.operations
    metrics = ServerMetrics(operations)
    tenants = app.state.tenants

    async def serve(request: Request) -> Response:
        if tenants.tenant_of(_key(request)) is None:
            body = json.dumps({"error": "invalid X-API-Key", "category": "user"})
            return Response(body, status_code=401, media_type="application/json")
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_route(METRICS_PATH, serve, methods=["GET"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.routes)
    app.state.metrics = metrics
    return metrics


def _key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is None:
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            key = authorization[len("bearer ") :].strip()
    return key
