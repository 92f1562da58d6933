"""OpenAI-compatible inference on ``tinker-std serve`` (``/oai/api/v1``, hosted Tinker's path).

- ``wire``: the request types and the refusal of every OpenAI field tinker-std does not implement;
- ``models``: which weights a request's ``model`` names, per tenant (base model or ``tinker://``
  sampler path), and the API key of a request;
- ``generate``: sampling through the library's ``SamplingClient`` and OpenAI's stop/EOS rules;
- ``replies``: the response bodies, and the stream chunks of a finished reply;
- ``stream``, ``stream_replies``: token-incremental streams on a backend that decodes
  incrementally (``Backend.incremental_decode``, through the ``TokenSink`` seam);
- ``routes``: the HTTP routes (``create_app`` adds them beside the Tinker API's).
"""

from __future__ import annotations

from starlette.routing import Route

from ..operations import WireService
from ..tenants import Tenants
from .models import OaiModels
from .routes import OAI_PREFIX
from .routes import oai_routes as _routes

__all__ = ["OAI_PREFIX", "oai_routes"]


def oai_routes(operations: WireService, tenants: Tenants, max_body_bytes: int) -> list[Route]:
    """The OpenAI-compatible routes over ``operations``' service, checkpoints and quotas."""
    models = OaiModels(operations.service, operations.checkpoints)
    return _routes(models, tenants, operations.futures, max_body_bytes, lambda: operations.closing)
