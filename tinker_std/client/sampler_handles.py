"""Sampler handles: ``SamplingClient.get_sampler_handle`` / ``from_sampler_handle`` and pickling,
as in tinker 0.38, for an in-process backend.

A handle is URL-safe base64 of a small JSON object: the sampler id, where its weights come from
(``model_path``, ``base_model`` or a snapshot), the backend name and checkpoint folder, and a token
of the process that made it. It carries no weights and no credentials. Decoding it:

- in the process that made it, while that ``ServiceClient`` is open: a new client of the same
  sampler (the backend frees the sampler when the last of them is garbage collected, SMP-19);
- in another process: a new sampler over the same weights from the same checkpoint folder, on a
  ``ServiceClient`` of the same backend made once per process, for a checkpoint (``model_path``)
  or a base model; a snapshot's weights live only in the process that took it, so its handle is
  a ``NotFoundError`` elsewhere (save the weights with ``save_weights_for_sampler`` and pass the
  path instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import uuid
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..backend import SamplerSpec
from ..errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from .sampling import SamplingClient
    from .service import ServiceClient

__all__ = ["SamplerOrigin", "decode_handle", "encode_handle", "retain", "release"]

PROCESS_TOKEN = uuid.uuid4().hex


@dataclass(frozen=True)
class SamplerOrigin:
    """Where a sampler's weights come from: a checkpoint path, a base model, or neither (a snapshot)."""

    model_path: str | None = None
    base_model: str | None = None


@dataclass
class _Live:
    service: weakref.ref[ServiceClient]
    spec: SamplerSpec
    origin: SamplerOrigin
    clients: int = 0


_lock = threading.Lock()
_live: dict[tuple[int, str], _Live] = {}
_services: dict[tuple[str, str | None], ServiceClient] = {}


def retain(service: ServiceClient, spec: SamplerSpec, origin: SamplerOrigin) -> None:
    """One more live ``SamplingClient`` of ``spec.sampler_id`` on ``service``."""
    with _lock:
        entry = _live.setdefault((id(service), spec.sampler_id), _Live(weakref.ref(service), spec, origin))
        entry.clients += 1


def release(service: ServiceClient, sampler_id: str) -> None:
    """A ``SamplingClient`` was collected; the backend may free the sampler once none is left."""
    with _lock:
        entry = _live.get((id(service), sampler_id))
        if entry is None:
            return
        entry.clients -= 1
        if entry.clients > 0:
            return
        del _live[(id(service), sampler_id)]
    service._release_sampler(sampler_id)


def encode_handle(client: SamplingClient) -> str:
    service = client._service
    store = getattr(service.backend, "checkpoint_store", None)
    payload = {
        "v": 1,
        "process": PROCESS_TOKEN,
        "service": id(service),
        "sampler_id": client.spec.sampler_id,
        "backend": service.backend_name,
        "checkpoint_dir": None if store is None else str(store.root),
        "record_stability_info": client.record_stability_info,
        **asdict(client.origin),
    }
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_handle(handle: Any) -> SamplingClient:
    from .sampling import SamplingClient
    from .service import ServiceClient

    try:
        payload = json.loads(base64.urlsafe_b64decode(str(handle).encode()))
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise ValueError("unknown handle version")
        origin = SamplerOrigin(payload.get("model_path"), payload.get("base_model"))
        record = bool(payload["record_stability_info"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadRequestError("handle", f"not a tinker-std sampler handle: {exc}") from None
    if payload["process"] == PROCESS_TOKEN:
        with _lock:
            entry = _live.get((payload["service"], payload["sampler_id"]))
            service = entry.service() if entry is not None else None
        if entry is not None and service is not None:
            return SamplingClient(service, entry.spec, record, entry.origin)
    if origin.model_path is None and origin.base_model is None:
        raise NotFoundError(
            f"sampler {payload['sampler_id']!r} is a snapshot whose weights lived only in the process that took it "
            "(or that ServiceClient was closed); pass a save_weights_for_sampler path instead"
        )
    key = (str(payload["backend"]), payload.get("checkpoint_dir"))
    with _lock:
        service = _services.get(key)
        if service is None:
            options = {} if key[1] is None else {"checkpoint_dir": key[1]}
            service = _services[key] = ServiceClient(backend=key[0], **options)
    return service.create_sampling_client(
        model_path=origin.model_path, base_model=origin.base_model, record_stability_info=record
    ).result()
