"""Bounded resources in the client layer and backends (issue 21 item 4; spec LIM-1..LIM-3).

The issue's reproductions: ``create_lora_training_client(rank=2**31)`` failed with a raw allocator
error; ``rank=4096`` was accepted on a 64-wide model; ``sample(num_samples=1024, max_tokens=250)``
was accepted and occupied the backend for minutes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tinker_std as ts


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path))
    yield service
    service.close()


def test_huge_rank_is_refused_typed(mock: ts.ServiceClient) -> None:
    with pytest.raises(ts.LimitExceededError) as info:
        mock.create_lora_training_client(base_model="mock/tiny", rank=2**31).result()
    assert info.value.field == "rank" and "512" in str(info.value)


def test_rank_above_the_model_width_is_refused(mock: ts.ServiceClient) -> None:
    with pytest.raises(ts.LimitExceededError) as info:
        mock.create_lora_training_client(base_model="mock/tiny", rank=33).result()  # mock/tiny is 32 wide
    assert info.value.field == "rank" and "width 32" in str(info.value)
    assert mock.create_lora_training_client(base_model="mock/tiny", rank=32).result().get_info().lora_rank == 32


def test_the_issues_sample_request_is_refused(mock: ts.ServiceClient) -> None:
    sampler = mock.create_sampling_client(base_model="mock/tiny").result()
    prompt = ts.ModelInput.from_ints([1, 2, 3])
    with pytest.raises(ts.LimitExceededError) as info:
        sampler.sample(prompt, 1024, ts.SamplingParams(max_tokens=250))
    assert info.value.field == "num_samples"


def test_torch_rank_above_the_model_width_is_refused(tmp_path: Path) -> None:
    wide_cap = ts.Limits(max_lora_rank=2**20)  # only the width check stands between 4096 and allocation
    with ts.ServiceClient(backend="torch", checkpoint_dir=str(tmp_path), limits=wide_cap) as service:
        with pytest.raises(ts.LimitExceededError) as info:
            service.create_lora_training_client(base_model="tiny-llama", rank=4096).result()
        assert info.value.field == "rank" and "width" in str(info.value)


def test_the_server_bounds_num_samples_by_its_services_limits(tmp_path: Path) -> None:
    """Over HTTP with the official SDK, ``asample`` is bounded by the served ServiceClient's
    ``Limits.max_num_samples`` (spec/11 server table, LIM-3): the same bound and error as in process."""
    import tinker

    from tinker_std.server import TinkerServer

    service = ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path), limits=ts.Limits(max_num_samples=4))
    try:
        with TinkerServer(service, api_key="tml-limits-test") as server:
            sdk = tinker.ServiceClient(base_url=server.url, api_key="tml-limits-test")
            sampler = sdk.create_sampling_client(base_model="mock/tiny").result()
            prompt, params = tinker.ModelInput.from_ints([1, 2, 3]), tinker.SamplingParams(max_tokens=2)
            assert len(sampler.sample(prompt, num_samples=4, sampling_params=params).result().sequences) == 4
            with pytest.raises(tinker.BadRequestError) as info:
                sampler.sample(prompt, num_samples=5, sampling_params=params).result()
            body = info.value.body
            assert isinstance(body, dict) and body.get("field") == "num_samples", body
            assert "LimitExceededError" in str(body.get("error")) and "limit of 4" in str(body.get("error")), body
    finally:
        service.close()
