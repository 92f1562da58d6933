"""The public SDK surface against the server (issue 13, items 1, 4, 5): REST, load_state into an
existing client, get_info, the offline tokenizer, zstd bodies, tenants, body limits, access log,
and a tested refusal for every method the server does not carry (listed in docs/server.md)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server_support import KEY, sdk_datum, served

tinker = pytest.importorskip("tinker")

BATCH = [[1, 5, 9, 14, 3, 7], [4, 4, 8, 2, 11]]
ADAM = {"learning_rate": 5e-2}


def fb(tc: Any) -> float:
    out = tc.forward_backward([sdk_datum(tinker, t) for t in BATCH], "cross_entropy").result()
    return float(out.metrics["loss:sum"])


def logprobs(tc: Any) -> np.ndarray:
    out = tc.forward([sdk_datum(tinker, BATCH[0])], "cross_entropy").result()
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy())


@pytest.fixture(scope="module")
def mock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    with served("mock", tmp_path_factory.mktemp("surface")) as (server, _service, base):
        yield server, tinker.ServiceClient(base_url=server.url, api_key=KEY), base


def test_rest_client_lists_reads_and_deletes_runs_and_checkpoints(mock_server: tuple[Any, Any, str]) -> None:
    server, sdk, base = mock_server
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=1, user_metadata={"task": "rest"})
    tc = tc.result() if hasattr(tc, "result") else tc
    assert tc.get_info().model_id == tc.model_id
    fb(tc)
    tc.optim_step(tinker.AdamParams(**ADAM)).result()
    state = tc.save_state("step-1").result().path
    weights = tc.save_weights_for_sampler("s-1").result().path
    assert state == f"tinker://{tc.model_id}/weights/step-1"
    rest = sdk.create_rest_client()

    run = rest.get_training_run(tc.model_id).result()
    assert run.training_run_id == tc.model_id and run.base_model == base and run.lora_rank == 4
    assert run.user_metadata == {"task": "rest"}
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state
    assert run.last_sampler_checkpoint is not None and run.last_sampler_checkpoint.tinker_path == weights
    assert rest.get_training_run_by_tinker_path(state).result().training_run_id == tc.model_id
    runs = rest.list_training_runs().result()
    assert tc.model_id in [r.training_run_id for r in runs.training_runs] and runs.cursor.total_count >= 1

    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert {c.tinker_path for c in listed} == {state, weights}
    assert {c.checkpoint_type for c in listed} == {"training", "sampler"}
    assert all(c.size_bytes and c.size_bytes > 0 for c in listed)
    mine = rest.list_user_checkpoints().result()
    assert {state, weights} <= {c.tinker_path for c in mine.checkpoints}

    info = rest.get_weights_info_by_tinker_path(state).result()
    assert info.base_model == base and info.lora_rank == 4 and info.is_lora

    rest.publish_checkpoint_from_tinker_path(state).result()
    assert [c.public for c in rest.list_checkpoints(tc.model_id).result().checkpoints if c.tinker_path == state] == [
        True
    ]
    rest.unpublish_checkpoint_from_tinker_path(state).result()
    assert not any(c.public for c in rest.list_checkpoints(tc.model_id).result().checkpoints)

    rest.set_checkpoint_ttl_from_tinker_path(weights, 3600).result()
    ttl = next(c for c in rest.list_checkpoints(tc.model_id).result().checkpoints if c.tinker_path == weights)
    assert ttl.expires_at is not None and 3500 < ttl.expires_at.timestamp() - time.time() <= 3600
    assert server.operations.checkpoints.delete_expired(now=time.time() + 3601) == 1  # what the reaper does
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [state]
    with pytest.raises(Exception, match="NotFoundError"):
        sdk.create_sampling_client(model_path=weights).result()

    rest.delete_checkpoint_from_tinker_path(state).result()
    assert rest.list_checkpoints(tc.model_id).result().checkpoints == []
    with pytest.raises(Exception, match="NotFoundError"):
        sdk.create_training_client_from_state(state).result()
    with pytest.raises(tinker.NotFoundError):
        rest.delete_checkpoint(tc.model_id, "weights/step-1").result()

    sessions = rest.list_sessions().result().sessions
    assert len(sessions) >= 1
    assert tc.model_id in rest.get_session(tc.model_id.split(":train:")[0]).result().training_run_ids
    sampler = tc.save_weights_and_get_sampling_client().result()
    assert rest.get_sampler(sampler._sampling_session_id).result().base_model == base
    assert rest.get_server_capabilities().result().supported_models[0].model_name == base


UNSUPPORTED_CALLS: dict[str, Callable[[Any, Any, Any, str], Any]] = {
    "RestClient.copy_weights": lambda sdk, rest, tc, url: rest.copy_weights(
        f"tinker://{tc.model_id}/weights/x", destination_project_id="p"
    ),
    "ServiceClient.copy_weights": lambda sdk, rest, tc, url: tinker.ServiceClient(
        base_url=url, api_key=KEY, project_id="p"
    ).copy_weights(f"tinker://{tc.model_id}/weights/x"),
    "RestClient.assign_session_project": lambda sdk, rest, tc, url: rest.assign_session_project("s", "p"),
    "RestClient.export_session_trace": lambda sdk, rest, tc, url: rest.export_session_trace("s"),
    "RestClient.get_current_checkpoint_storage_usage": lambda sdk, rest, tc, url: (
        rest.get_current_checkpoint_storage_usage()
    ),
    "RestClient.get_audit_log": lambda sdk, rest, tc, url: rest.get_audit_log(),
    "RestClient.get_billing_usage": lambda sdk, rest, tc, url: rest.get_billing_usage("2026-01-01", "2026-02-01"),
}


@pytest.mark.parametrize("method", sorted(UNSUPPORTED_CALLS))
def test_unsupported_methods_answer_a_documented_refusal(mock_server: tuple[Any, Any, str], method: str) -> None:
    server, sdk, base = mock_server
    tc = sdk.create_lora_training_client(base_model=base, rank=4).result()
    rest = sdk.create_rest_client()
    with pytest.raises(Exception, match=r"not (supported by|part of) the tinker-std server"):
        result = UNSUPPORTED_CALLS[method](sdk, rest, tc, server.url)
        result.result(timeout=60) if hasattr(result, "result") else None
    assert method in (Path(__file__).parents[1] / "docs" / "server.md").read_text()
    logprobs(tc)  # the client still answers (a refused training request consumed its seq_id)


#: checkpoint names that contain the words of refused endpoints (refusals match whole routes)
NAMES_LIKE_REFUSALS = ["project_v1", "audit-2", "billing_test", "copy_weights", "trace_export", "external_weights_urls"]


def test_checkpoints_named_like_refused_endpoints_work_over_rest(mock_server: tuple[Any, Any, str]) -> None:
    _, sdk, base = mock_server
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    fb(tc)
    rest = sdk.create_rest_client()
    paths = [tc.save_state(name).result().path for name in NAMES_LIKE_REFUSALS]
    sampler_paths = [tc.save_weights_for_sampler(name).result().path for name in NAMES_LIKE_REFUSALS]
    listed = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert listed == {*paths, *sampler_paths}
    for path, sampler_path in zip(paths, sampler_paths, strict=True):
        assert rest.get_weights_info_by_tinker_path(path).result().lora_rank == 4
        rest.publish_checkpoint_from_tinker_path(path).result()
        rest.set_checkpoint_ttl_from_tinker_path(sampler_path, 3600).result()
        sdk.create_sampling_client(model_path=sampler_path).sample(
            tinker.ModelInput.from_ints([1, 2]), 1, tinker.SamplingParams(max_tokens=2)
        ).result()
    published = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints if c.public}
    assert published == set(paths)
    loaded = sdk.create_training_client_from_state(paths[0]).result()
    np.testing.assert_array_equal(logprobs(loaded), logprobs(tc))
    for path in [*paths, *sampler_paths]:
        rest.delete_checkpoint_from_tinker_path(path).result()
    assert rest.list_checkpoints(tc.model_id).result().checkpoints == []


def test_load_state_into_an_existing_client_matches_creating_from_state(mock_server: tuple[Any, Any, str]) -> None:
    _, sdk, base = mock_server
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=5).result()
    fb(tc)
    tc.optim_step(tinker.AdamParams(**ADAM)).result()
    path = tc.save_state("ckpt").result().path
    saved = logprobs(tc)
    for _ in range(2):
        fb(tc)
        tc.optim_step(tinker.AdamParams(**ADAM)).result()
    assert not np.array_equal(logprobs(tc), saved)

    tc.load_state(path).result()  # weights only: a fresh optimizer (CKPT-4)
    np.testing.assert_array_equal(logprobs(tc), saved)
    fresh = sdk.create_training_client_from_state(path).result()
    assert fb(tc) == fb(fresh)
    tc.optim_step(tinker.AdamParams(**ADAM)).result()
    fresh.optim_step(tinker.AdamParams(**ADAM)).result()
    np.testing.assert_array_equal(logprobs(tc), logprobs(fresh))

    tc.load_state_with_optimizer(path).result()  # weights and AdamW moments (CKPT-5)
    resumed = sdk.create_training_client_from_state_with_optimizer(path).result()
    assert fb(tc) == fb(resumed)
    tc.optim_step(tinker.AdamParams(**ADAM)).result()
    resumed.optim_step(tinker.AdamParams(**ADAM)).result()
    np.testing.assert_array_equal(logprobs(tc), logprobs(resumed))
    assert tc.get_info().model_id == tc.model_id


def test_two_tenants_cannot_see_each_others_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_API_KEYS", "tml-alice=alice,tml-bob=bob")
    with served("mock", tmp_path, api_key=None) as (server, _service, base):
        alice = tinker.ServiceClient(base_url=server.url, api_key="tml-alice")
        bob = tinker.ServiceClient(base_url=server.url, api_key="tml-bob")
        tc = alice.create_lora_training_client(base_model=base, rank=4).result()
        fb(tc)
        path = tc.save_state("private").result().path
        sampler_path = tc.save_weights_for_sampler("private-s").result().path
        sampler = tc.save_weights_and_get_sampling_client().result()
        rest_b = bob.create_rest_client()
        assert rest_b.list_training_runs().result().training_runs == []
        assert rest_b.list_user_checkpoints().result().checkpoints == []
        for call in (
            lambda: rest_b.get_training_run(tc.model_id).result(),
            lambda: rest_b.list_checkpoints(tc.model_id).result(),
            lambda: rest_b.delete_checkpoint_from_tinker_path(path).result(),
            lambda: rest_b.get_weights_info_by_tinker_path(path).result(),
            lambda: rest_b.get_sampler(sampler._sampling_session_id).result(),
        ):
            with pytest.raises(tinker.NotFoundError):
                call()
        with pytest.raises(Exception, match="NotFoundError"):
            bob.create_training_client_from_state(path).result()
        with pytest.raises(Exception, match="NotFoundError"):
            bob.create_sampling_client(model_path=sampler_path).result()
        with pytest.raises(tinker.AuthenticationError):
            tinker.ServiceClient(base_url=server.url, api_key="tml-mallory").get_server_capabilities()
        # alice still has everything
        assert [
            c.tinker_path for c in alice.create_rest_client().list_checkpoints(tc.model_id).result().checkpoints
        ] == [
            path,
            sampler_path,
        ]


def test_zstd_request_bodies_give_the_same_results(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="tinker_std.server.access"),
        served("mock", tmp_path, compress_requests=True) as (server, _, base),
        served("mock", tmp_path) as (plain_server, _, _),
    ):
        zipped = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        zipped = zipped.create_lora_training_client(base_model=base, rank=4, seed=2).result()
        plain = tinker.ServiceClient(base_url=plain_server.url, api_key=KEY)
        plain = plain.create_lora_training_client(base_model=base, rank=4, seed=2).result()
        for _ in range(2):
            assert fb(zipped) == fb(plain)
            for tc in (zipped, plain):
                tc.optim_step(tinker.AdamParams(**ADAM)).result()
        np.testing.assert_array_equal(logprobs(zipped), logprobs(plain))
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tinker_std.server.access"]
    encodings = {r["encoding"] for r in records if r["path"] == "/api/v1/forward_backward"}
    assert encodings == {"zstd", None}  # one server got compressed bodies, the other plain ones


def test_the_tokenizer_loads_offline_from_the_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with served("torch", tmp_path) as (server, service, base):
        tc = tinker.ServiceClient(base_url=server.url, api_key=KEY).create_lora_training_client(base, rank=4).result()
        folder = tc.get_info().model_data.tokenizer_id
        assert folder is not None and Path(folder).is_dir()
        tokenizer = tc.get_tokenizer()
        want = service.backend.get_tokenizer(base)
        assert tokenizer.encode("hello tinker") == want.encode("hello tinker")


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_oversized_bodies_get_413_before_they_are_read(tmp_path: Path) -> None:
    with served("mock", tmp_path, max_body_bytes=1024) as (server, _, _):
        # 200 MB announced, unauthenticated, not one body byte sent: answered at once with 413
        status, head = _raw(
            server.url, b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
        )
        assert status == 413 and b"x-should-retry: false" in head.lower()
        # a body without a length is counted as it streams
        chunked = b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
        chunked += b"\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n"
        assert _raw(server.url, chunked)[0] == 413
        import httpx

        ok = httpx.post(f"{server.url}/api/v1/healthz", headers={"X-API-Key": KEY}, content=b"{}")
        assert ok.status_code == 200


def test_every_request_writes_one_structured_access_log_record(
    mock_server: tuple[Any, Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    server, _, _ = mock_server
    with caplog.at_level(logging.INFO, logger="tinker_std.server.access"):
        httpx.post(f"{server.url}/api/v1/healthz", headers={"X-API-Key": KEY}, content=b"{}")
        httpx.post(f"{server.url}/api/v1/no_such_endpoint", headers={"X-API-Key": KEY}, content=b"{}")
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tinker_std.server.access"]
    by_path = {r["path"]: r for r in records}
    assert by_path["/api/v1/healthz"]["status"] == 200 and by_path["/api/v1/healthz"]["tenant"] == "default"
    assert by_path["/api/v1/no_such_endpoint"]["status"] == 404
    assert all(isinstance(r["ms"], float) and r["method"] == "POST" for r in records)


def test_client_local_methods_need_no_server_support(mock_server: tuple[Any, Any, str]) -> None:
    _server, sdk, base = mock_server
    rest = sdk.create_rest_client()
    with pytest.raises(RuntimeError, match="JWT"):
        rest.whoami().result(timeout=30)  # the SDK decodes a JWT; API keys have none
    with pytest.raises(tinker.BadRequestError, match="not supported by the tinker-std server"):
        rest.search_sessions(tinker.types.SessionSearchRequest()).result(timeout=30)

    def loss(logprobs: Any) -> Any:
        return logprobs.sum(), {}

    handle = sdk.create_custom_loss(loss, {"logprobs": 1}).result(timeout=30)
    assert handle.loss_id is not None  # uploaded: the server runs custom losses (tests/test_custom_loss.py)
    sampler = sdk.create_sampling_client(base_model=base).result()
    again = tinker.SamplingClient.from_sampler_handle(sampler.get_sampler_handle(), api_key=KEY)
    assert again.get_base_model() == base
