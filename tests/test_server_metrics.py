"""``GET /metrics`` (tinker_std/server/metrics.py) scraped during a small load through the official SDK.

Independent references: the request counts are compared with the server's access log (one record
per HTTP request, written by another middleware), the token counters with the token counts the SDK
itself received and sent, the error counters with refusals this test provokes on purpose.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_support import KEY, Wire, sdk_datum, served

tinker = pytest.importorskip("tinker")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, key: str | None = KEY, bearer: bool = False) -> Samples:
    headers = {} if key is None else ({"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key})
    reply = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_metrics_count_an_sdk_load_and_its_refusals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinker_std.server.access")
    with served("mock", tmp_path) as (server, _, base):
        assert httpx.get(server.url + "/metrics", timeout=30).status_code == 401  # same keys as the API
        assert httpx.get(server.url + "/metrics", headers={"X-API-Key": "wrong"}, timeout=30).status_code == 401

        with tinker.ServiceClient(base_url=server.url, api_key=KEY) as sdk:  # closed: heartbeats stop
            training = sdk.create_lora_training_client(base_model=base, rank=4, seed=1).result()
            batches = [[[1, 2, 3, 4, 5], [6, 7, 8]], [[9, 10, 11, 12]], [[3, 4, 5, 6, 7, 8], [1, 2]]]
            for batch in batches:
                training.forward_backward([sdk_datum(tinker, t) for t in batch], "cross_entropy").result()
                training.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
            sampler = training.save_weights_and_get_sampling_client().result()
            sampled = 0
            for prompt in ([1, 2, 3], [4, 5]):
                result = sampler.sample(
                    tinker.ModelInput.from_ints(prompt), 2, tinker.SamplingParams(max_tokens=6, seed=7)
                ).result()
                sampled += sum(len(seq.tokens) for seq in result.sequences)
            assert sampled > 0
            during = scrape(server.url)  # while the session, and its model, are alive

        wire = Wire(server.url)
        refused = wire.post("forward_backward", {"model_id": "no-such-model", "seq_id": 1})
        assert refused.status_code >= 400
        unauthorised = Wire(server.url, key="wrong").post("create_session", {})
        assert unauthorised.status_code == 401

        after = scrape(server.url)
        by_bearer = scrape(server.url, bearer=True)  # Prometheus' authorization header
        assert total(by_bearer, "tinker_std_requests_total") == total(after, "tinker_std_requests_total")
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tinker_std.server.access"]

    # every API request the access log saw, and only those, is counted under its endpoint
    logged = Counter(r["path"].removeprefix("/api/v1/") for r in records if r["path"].startswith("/api/v1/"))
    by_endpoint: Counter[str] = Counter()
    for (name, labels), value in after.items():
        if name == "tinker_std_requests_total":
            by_endpoint[dict(labels)["endpoint"]] += int(value)
    assert sum(by_endpoint.values()) == sum(logged.values())
    assert by_endpoint["forward_backward"] == logged["forward_backward"] == 3 + 1  # 3 SDK calls + the refused one
    assert by_endpoint["optim_step"] == logged["optim_step"] == 3
    assert total(after, "tinker_std_requests_total", endpoint="create_session", status="401") == 1

    # errors: the refused forward_backward (unknown model) and the bad key
    assert total(after, "tinker_std_request_errors_total", endpoint="forward_backward", tenant="default") == 1
    assert total(after, "tinker_std_request_errors_total", endpoint="create_session", error_type="HTTP401") == 1
    assert total(after, "tinker_std_request_errors_total", endpoint="optim_step") == 0

    # latency histograms: one observation per request, positive durations
    assert total(after, "tinker_std_request_duration_seconds_count", endpoint="forward_backward") == 4
    assert total(after, "tinker_std_request_duration_seconds_sum", endpoint="forward_backward") > 0
    assert total(after, "tinker_std_request_duration_seconds_bucket", endpoint="optim_step", le="+Inf") == 3

    # tokens: target positions of the training data, tokens of the sampled sequences
    trained = sum(len(t) - 1 for batch in batches for t in batch)
    assert total(after, "tinker_std_training_tokens_total", tenant="default") == trained
    assert total(after, "tinker_std_sampled_tokens_total", tenant="default") == sampled

    # gauges: one training model while the session lived, its queue drained; nothing left unfinished
    assert [v for (n, _), v in during.items() if n == "tinker_std_queue_depth"] == [0.0]
    assert total(during, "tinker_std_requests_total", endpoint="forward_backward") == 3
    assert total(after, "tinker_std_unfinished_requests") == 0


def test_each_server_counts_apart(tmp_path: Path) -> None:
    with served("mock", tmp_path / "a") as (first, _, _), served("mock", tmp_path / "b") as (second, _, _):
        for _ in range(3):
            Wire(first.url).session()
        Wire(second.url).session()
        assert total(scrape(first.url), "tinker_std_requests_total", endpoint="create_session") == 3
        assert total(scrape(second.url), "tinker_std_requests_total", endpoint="create_session") == 1


def test_open_server_serves_metrics_without_a_key(tmp_path: Path) -> None:
    options: dict[str, Any] = {"api_key": None}
    with served("mock", tmp_path, **options) as (server, _, _):
        Wire(server.url, key="anything").session()
        samples = scrape(server.url, key=None)
        assert total(samples, "tinker_std_requests_total", endpoint="create_session", status="200") == 1
