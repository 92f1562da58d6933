"""External weights: ``save_weights_external`` and the signed URLs that download them.

``save_weights_external(name)`` (SDK 0.38) writes ``tinker://<model_id>/external_weights/<name>``:
a standard peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, loadable
by ``peft.PeftModel.from_pretrained`` on the base model), taken from a sampler checkpoint the
backend writes for the purpose (then deleted). A backend whose checkpoints are not peft adapters
(``mock``) is refused with ``Unsupported``. With ``age_encryption_recipients`` every file is
encrypted to those recipients (``age1...`` or SSH public keys, through ``pyrage``) and stored with
a ``.age`` suffix. ``ttl_seconds`` expires it like any checkpoint (the server's reaper).

``RestClient.get_external_weights_urls`` answers ``{"urls": {file: url}, "expires": iso}``; each
URL points at this server's ``/external_weights/...`` route (outside ``/api/v1``, so it needs no
API key: ``urllib`` in ``tinker checkpoint download`` sends none) and carries the tenant, an
expiry (unix seconds) and an HMAC-SHA256 signature over tenant, run, checkpoint, file and expiry
with the server's secret (``TINKER_STD_URL_SECRET``, else random per process: URLs then die with
the process). A download is answered 403 for a bad signature (any field changed), an expired URL,
or a request that carries the API key of another tenant; 404 when the checkpoint is gone (deleted
or expired) or has no such file. Public base of the URLs: ``TINKER_STD_PUBLIC_URL``, else the
request's own base URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError, TinkerError
from tinker_std.types import ParsedCheckpointTinkerPath

from .checkpoint_files import EXTERNAL_SCHEME, CheckpointFiles, external_root
from .failures import ServerUnsupported, error_reply
from .messages import WireReply
from .middleware import PREFIX
from .records import ServerRecords
from .state import TrainingModel
from .tenants import Tenants

__all__ = ["DOWNLOAD_PREFIX", "ExternalWeights", "UrlSigner", "parse_recipients"]

SEGMENT = "external_weights"
DOWNLOAD_PREFIX = "/external_weights/"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
AGE_SUFFIX = ".age"
MAX_RECIPIENTS = 10  # as the SDK documents
SECRET_ENV = "TINKER_STD_URL_SECRET"
PUBLIC_URL_ENV = "TINKER_STD_PUBLIC_URL"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


class UrlSigner:
    """HMAC-SHA256 signatures of download URLs under one server secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        env = os.environ.get(SECRET_ENV)
        self.secret = secret or (env.encode() if env else secrets.token_bytes(32))

    def sign(self, tenant: str, run_id: str, checkpoint_id: str, file: str, expires: int) -> str:
        message = "\n".join((tenant, run_id, checkpoint_id, file, str(expires))).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def valid(self, tenant: str, run_id: str, checkpoint_id: str, file: str, expires: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(tenant, run_id, checkpoint_id, file, expires), signature)


def parse_recipients(value: Any) -> list[Any]:
    """``age_encryption_recipients`` as pyrage recipients; ``BadRequestError`` naming the field for
    a value that is not a list of 1-10 age or SSH public keys, ``ServerUnsupported`` naming it
    when ``pyrage`` is not installed."""
    if value is None:
        return []
    field = "age_encryption_recipients"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequestError(field, f"must be a non-empty list of age recipients, got {value!r}")
    if len(value) > MAX_RECIPIENTS:
        raise BadRequestError(field, f"at most {MAX_RECIPIENTS} recipients, got {len(value)}")
    try:
        import pyrage
    except ImportError:
        raise ServerUnsupported(
            f"{field}: age encryption needs pyrage on the server (pip install 'tinker-std[server]')"
        ) from None
    parsed = []
    for text in value:
        kind = pyrage.ssh if text.startswith(("ssh-", "ecdsa-")) else pyrage.x25519
        try:
            parsed.append(kind.Recipient.from_str(text.strip()))
        except Exception as exc:
            raise BadRequestError(field, f"{text[:40]!r} is not an age or SSH public key: {exc}") from None
    return parsed


class ExternalWeights:
    """External-weights checkpoints of ``service``'s backend, recorded in ``records``."""

    def __init__(
        self,
        service: ServiceClient,
        records: ServerRecords,
        checkpoints: CheckpointFiles,
        signer: UrlSigner | None = None,
        url_ttl_s: int = 3600,
    ) -> None:
        self.service = service
        self.records = records
        self.checkpoints = checkpoints
        self.signer = signer or UrlSigner()
        self.url_ttl_s = url_ttl_s

    # -- saving ------------------------------------------------------------------------------

    def save(self, model: TrainingModel, body: dict[str, Any]) -> dict[str, Any]:
        """Run one ``save_weights_external`` request of ``model`` (in its ``seq_id`` order).
        Every field is checked before anything is written."""
        name, ttl = body.get("path"), body.get("ttl_seconds")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BadRequestError("path", f"must be a checkpoint name (letters, digits, _ . -), got {name!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise BadRequestError("ttl_seconds", f"must be a positive integer, got {ttl!r}")
        recipients = parse_recipients(body.get("age_encryption_recipients"))
        checkpoint_id = f"{SEGMENT}/{name}"
        if self.records.checkpoint(model.tenant, model.model_id, checkpoint_id) is not None:
            raise ConflictError(f"checkpoint tinker://{model.model_id}/{checkpoint_id} already exists")
        store = getattr(self.service.backend, "checkpoint_store", None)
        root = external_root(self.service)
        if store is None or root is None:
            raise ServerUnsupported(
                f"save_weights_external: backend {self.service.backend.name!r} keeps no local files"
            )
        client = model.ready()
        backend_path = client.save_weights_for_sampler(f"external-{uuid.uuid4().hex[:12]}").result().path
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(backend_path)
        try:
            source = store.directory(parsed)
            if not all((source / f).is_file() for f in PEFT_FILES):
                raise ServerUnsupported(
                    f"save_weights_external: backend {self.service.backend.name!r} does not store peft adapters"
                )
            folder_id = uuid.uuid4().hex
            size = _write_folder(source, root, folder_id, recipients)
        finally:
            store.delete(parsed)
        self.records.add_checkpoint(
            model.model_id,
            checkpoint_id,
            model.tenant,
            "external",
            EXTERNAL_SCHEME + folder_id,
            size_bytes=size,
            expires_at=time.time() + ttl if ttl else None,
        )
        self.records.touch_run(model.model_id)
        return {
            "path": f"tinker://{model.model_id}/{checkpoint_id}",
            "size_bytes": size,
            "type": "save_weights_external",
        }

    # -- signed URLs -------------------------------------------------------------------------

    def routes(self, tenants: Tenants) -> list[Route]:
        """The URL-signing REST route (under ``/api/v1``, authenticated by the middleware) and the
        download route (outside it: the signature is the credential)."""

        async def urls(request: Request) -> Response:
            return await _answer(self.urls, request, request.scope["state"]["tenant"], _base_url(request))

        async def download(request: Request) -> Response:
            return await _answer(self.download, request, tenants)

        return [
            Route(
                PREFIX + "training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls", urls, methods=["GET"]
            ),
            Route(DOWNLOAD_PREFIX + "{run_id}/{name}/{file:path}", download, methods=["GET"]),
        ]

    def urls(self, request: Request, tenant: str, base_url: str) -> Response:
        params = request.path_params
        if params["kind"] != SEGMENT:
            raise BadRequestError("checkpoint_id", f"only {SEGMENT}/<name> checkpoints have download URLs")
        run_id, name = str(params["run_id"]), str(params["name"])
        folder = self._folder(tenant, run_id, name)
        expires = int(time.time()) + self.url_ttl_s
        urls = {}
        for file in _files(folder):
            query = {"tenant": tenant, "expires": expires}
            query["signature"] = self.signer.sign(tenant, run_id, f"{SEGMENT}/{name}", file, expires)
            path = "/".join(quote(part, safe="") for part in (run_id, name, *file.split("/")))
            urls[file] = f"{base_url}{DOWNLOAD_PREFIX}{path}?{urlencode(query)}"
        body = {"urls": urls, "expires": datetime.fromtimestamp(expires, UTC).isoformat()}
        return _json(WireReply.json(body))

    def download(self, request: Request, tenants: Tenants) -> Response:
        params, query = request.path_params, request.query_params
        run_id, name, file = str(params["run_id"]), str(params["name"]), str(params["file"])
        tenant, signature = query.get("tenant", ""), query.get("signature", "")
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return _refusal(403, "the URL has no valid expiry")
        if not self.signer.valid(tenant, run_id, f"{SEGMENT}/{name}", file, expires, signature):
            return _refusal(403, "the URL's signature does not match (changed or not signed by this server)")
        if time.time() > expires:
            return _refusal(403, "the URL has expired; ask for new ones (RestClient.get_external_weights_urls)")
        key = request.headers.get("x-api-key")
        if key is not None and not tenants.open and tenants.tenant_of(key) != tenant:
            return _refusal(403, "the URL was signed for another tenant")
        folder = self._folder(tenant, run_id, name)
        if file not in _files(folder):
            raise NotFoundError(f"tinker://{run_id}/{SEGMENT}/{name} has no file {file!r}")
        return FileResponse(folder / file, media_type="application/octet-stream")

    def _folder(self, tenant: str, run_id: str, name: str) -> Path:
        record = self.records.checkpoint(tenant, run_id, f"{SEGMENT}/{name}")
        root = external_root(self.service)
        if record is None or root is None or (record.expires_at is not None and record.expires_at < time.time()):
            raise NotFoundError(f"no checkpoint tinker://{run_id}/{SEGMENT}/{name}")
        return root / record.backend_path[len(EXTERNAL_SCHEME) :]


def _write_folder(source: Path, root: Path, folder_id: str, recipients: list[Any]) -> int:
    """Copy (or encrypt) the peft files of ``source`` into ``root/folder_id``, atomically; bytes written."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{folder_id}"
    staging.mkdir()
    try:
        for name in PEFT_FILES:
            if recipients:
                import pyrage

                (staging / (name + AGE_SUFFIX)).write_bytes(pyrage.encrypt((source / name).read_bytes(), recipients))
            else:
                shutil.copyfile(source / name, staging / name)
        size = sum(f.stat().st_size for f in staging.iterdir())
        os.replace(staging, root / folder_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return size


def _files(folder: Path) -> list[str]:
    return sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())


def _base_url(request: Request) -> str:
    return (os.environ.get(PUBLIC_URL_ENV) or str(request.base_url)).rstrip("/")


async def _answer(handler: Any, request: Request, *args: Any) -> Response:
    try:
        response: Response = await run_in_threadpool(handler, request, *args)
        return response
    except TinkerError as exc:
        return _json(error_reply(exc))


def _json(reply: WireReply) -> Response:
    headers = {"x-should-retry": "false"} if reply.status >= 400 and reply.status != 404 else {}
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)


def _refusal(status: int, error: str) -> Response:
    return _json(WireReply.json({"error": f"Forbidden: {error}", "category": "user"}, status))
