"""Under load (issue 13, item 7): 16 SDK clients at once on loopback, each sending 52 mixed
training and sampling requests to its own model; no result is lost, duplicated, failed or
reordered: every client's losses and sampled tokens equal the same calls replayed in process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as ts

from _support import sequence_datum
from server_support import KEY, sdk_datum, served

tinker = pytest.importorskip("tinker")

CLIENTS = 16
STEPS = 13  # 4 requests a step: forward_backward, optim_step, save-for-sampler + sample


def batch(client: int, step: int) -> list[list[int]]:
    rng = np.random.default_rng(1000 * client + step)
    return [rng.integers(1, 200, size=int(rng.integers(3, 9))).tolist() for _ in range(2)]


def run_remote(url: str, base: str, client: int) -> list[Any]:
    sdk = tinker.ServiceClient(base_url=url, api_key=KEY)
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=client).result()
    seen: list[Any] = []
    for step in range(STEPS):
        out = tc.forward_backward([sdk_datum(tinker, t) for t in batch(client, step)], "cross_entropy")
        opt = tc.optim_step(tinker.AdamParams(learning_rate=1e-2))
        seen.append(out.result().metrics["loss:sum"])
        seen.append(opt.result().metrics["grad_norm:max"])
        sampler = tc.save_weights_and_get_sampling_client().result()
        params = tinker.SamplingParams(max_tokens=4, seed=step)
        sample = sampler.sample(tinker.ModelInput.from_ints([1, 2, 3]), num_samples=1, sampling_params=params)
        seen.append(list(sample.result().sequences[0].tokens))
    return seen


def run_local(service: ts.ServiceClient, base: str, client: int) -> list[Any]:
    tc = service.create_lora_training_client(base_model=base, rank=4, seed=client).result()
    seen: list[Any] = []
    for step in range(STEPS):
        out = tc.forward_backward([sequence_datum(t) for t in batch(client, step)], "cross_entropy").result()
        opt = tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
        assert opt.metrics is not None
        seen += [out.metrics["loss:sum"], opt.metrics["grad_norm:max"]]
        sampler = tc.save_weights_and_get_sampling_client().result()
        params = ts.SamplingParams(max_tokens=4, seed=step)
        seen.append(sampler.sample(ts.ModelInput.from_ints([1, 2, 3]), 1, params).result().sequences[0].tokens)
    return seen


def test_sixteen_concurrent_sdk_clients_get_exactly_their_in_process_results(tmp_path: Path) -> None:
    with served("mock", tmp_path) as (server, _, base):
        with ThreadPoolExecutor(CLIENTS) as pool:
            remote = list(pool.map(lambda c: run_remote(server.url, base, c), range(CLIENTS)))
        failed = [p for p in server.operations.futures.pending() if p.future.exception() is not None]
        assert failed == []
    with ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "ref")) as local:
        for client in range(CLIENTS):
            want = run_local(local, base, client)
            got = remote[client]
            assert len(got) == len(want) == 3 * STEPS
            for g, w in zip(got, want, strict=True):
                if isinstance(w, list):
                    assert g == w, client
                else:
                    assert g == pytest.approx(w, rel=1e-6, abs=1e-6), client
