"""Which weights an OpenAI ``model`` names, and who may ask for them.

``model`` is, as on hosted Tinker's OpenAI-compatible API:

- a base model the server serves (``GET /models`` lists them), sampled as is;
- a ``tinker://<run>/sampler_weights/<name>`` path saved by ``save_weights_for_sampler``
  (any checkpoint path the server's ``create_sampling_session`` accepts), sampled on the base model
  it was trained on;
- ``<base model>;<tinker:// path>``: the same, and the base model must be the checkpoint's.

``GET /models`` lists, for the caller's tenant, the base models and the tenant's own unexpired
sampler checkpoints (``sampler_checkpoints``); another tenant's never appear.

A path is resolved through the server's checkpoint records for the caller's tenant exactly as
``create_sampling_session`` resolves ``model_path``: another tenant's path is ``NotFoundError``
(404), like a path that does not exist. The sampler of each resolved model is kept (the last
``cache_size`` used), so a harness's thousands of requests load the weights once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from tinker_std.client.sampling import SamplingClient
from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError, NotFoundError

from ..checkpoint_files import EXTERNAL_SCHEME, CheckpointFiles
from ..tenants import Tenants

__all__ = ["ModelNotFound", "OaiModels", "tenant_of_request"]


class ModelNotFound(NotFoundError):
    """The ``model`` of a request names nothing this tenant may sample (404, ``param: model``)."""

    field = "model"


class OaiModels:
    """Resolves ``model`` strings to sampling clients of ``service``, per tenant."""

    def __init__(self, service: ServiceClient, checkpoints: CheckpointFiles, cache_size: int = 8) -> None:
        self.service = service
        self.checkpoints = checkpoints
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str | None, str | None], SamplingClient] = OrderedDict()

    def base_models(self) -> list[str]:
        """The base models the server serves (its capabilities' ``supported_models``)."""
        models = self.service.get_server_capabilities().supported_models
        return [m.model_name for m in models if m.model_name]

    def decodes_incrementally(self) -> bool:
        """Whether the backend reports tokens while it decodes (``Backend.incremental_decode``)."""
        return type(self.service.backend).incremental_decode

    def sampler_checkpoints(self, tenant: str) -> list[tuple[str, str | None, int]]:
        """``(tinker:// path, base model, unix time saved)`` of every unexpired sampler checkpoint of ``tenant``
        (``save_weights_for_sampler``), oldest first: the paths ``sampler`` accepts from it."""
        records = self.checkpoints.records
        now = time.time()
        out = []
        for record in records.checkpoints(tenant)[0]:
            if record.kind != "sampler" or (record.expires_at is not None and record.expires_at <= now):
                continue
            if record.backend_path.startswith(EXTERNAL_SCHEME):
                continue  # a download folder (save_weights_external), not something a sampler loads
            run = records.run(tenant, record.run_id)
            out.append((record.tinker_path, None if run is None else run.base_model, int(record.time)))
        return out

    def sampler(self, tenant: str, model: str) -> SamplingClient:
        """The sampler of ``model`` for ``tenant`` (blocking: may load weights)."""
        base, path = _split(model)
        backend_path = None
        if path is not None:
            try:
                backend_path = self.checkpoints.resolve(tenant, path, "model")
            except NotFoundError as exc:
                raise ModelNotFound(str(exc.args[0]) if exc.args else f"no checkpoint at {path}") from None
        key = (backend_path, base)
        with self._lock:
            client = self._cache.get(key)
            if client is not None:
                self._cache.move_to_end(key)
                return client
        try:
            client = self.service.create_sampling_client(model_path=backend_path, base_model=base).result()
        except BadRequestError as exc:
            raise BadRequestError("model", exc.problem) from None
        except NotFoundError as exc:
            raise ModelNotFound(f"model {model!r}: {exc}") from None
        with self._lock:
            self._cache[key] = client
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return client


def _split(model: str) -> tuple[str | None, str | None]:
    """``(base model, tinker:// path)`` of a ``model`` string; either may be ``None``."""
    if ";" in model:
        base, _, path = model.partition(";")
        if not base or not path.startswith("tinker://"):
            raise BadRequestError("model", "expected '<base model>;tinker://<checkpoint path>'")
        return base, path
    if model.startswith("tinker://"):
        return None, model
    return model, None


def tenant_of_request(tenants: Tenants, headers: dict[str, str]) -> str | None:
    """The tenant of a request's key: ``Authorization: Bearer <key>`` (what OpenAI clients send) or
    ``X-API-Key`` (what the Tinker SDK sends); ``None`` for a refused key."""
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
    return tenants.tenant_of(key)
