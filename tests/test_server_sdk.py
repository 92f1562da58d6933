"""The official ``tinker`` SDK (0.38) against ``TinkerServer`` over real loopback HTTP.

Every number the SDK gets back is compared with the same calls made in process on a second
``ServiceClient`` of the same backend (same seeds): losses, logprobs and gradient norms within the
spec's fp32 tolerance (the SDK splits a batch into 1-datum requests here, which the torch backend
runs as separate passes, so rows are computed in other GEMM blocks: measured up to 2e-6), sampled
tokens exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.server import TinkerServer

from _support import sequence_datum

tinker = pytest.importorskip("tinker")
os.environ["TINKER_TELEMETRY"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "tml-tinker-std-test"
ATOL = 1e-4  # per-element atol of the fp32 class (spec TOL-2, TOL-3)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tinker-std-cache"))


def sdk_datum(tokens: list[int], weights: list[float]) -> Any:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


BATCH = [
    ([1, 5, 9, 14, 3, 7], [1.0, 1.0, 0.5, 0.0, 2.0]),
    ([4, 4, 8, 2, 11], [0.0, 1.0, 1.0, 1.0]),
    ([10, 3, 6], [1.0, -0.5]),
]


@pytest.fixture(params=["mock", "torch"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, ts.ServiceClient, str]]:
    """(SDK service client over HTTP with 1-datum chunks, in-process reference client, base model)."""
    name: str = request.param
    options: dict[str, Any] = {"checkpoint_dir": str(tmp_path / "ckpt")}
    served = ts.ServiceClient(backend=name, **options)
    reference = ts.ServiceClient(backend=name, checkpoint_dir=str(tmp_path / "ref"))
    base = served.get_server_capabilities().supported_models[0].model_name
    with TinkerServer(served, api_key=KEY, sdk_chunk_datums=1) as server:
        yield tinker.ServiceClient(base_url=server.url, api_key=KEY), reference, base
    served.close()
    reference.close()


def test_training_and_sampling_through_the_sdk_match_in_process(servers: tuple[Any, ts.ServiceClient, str]) -> None:
    sdk, reference, base = servers
    remote = sdk.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    local = reference.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    assert remote.get_info().model_data.model_name == base

    for step in range(2):
        # 3 datums in 1-datum chunks: 3 HTTP requests whose gradients must accumulate (FB-3)
        got = remote.forward_backward([sdk_datum(t, w) for t, w in BATCH], "cross_entropy").result()
        want = local.forward_backward([sequence_datum(t, w) for t, w in BATCH], "cross_entropy").result()
        assert got.metrics["loss:sum"] == pytest.approx(want.metrics["loss:sum"], abs=ATOL * 10), step
        for g, w in zip(got.loss_fn_outputs, want.loss_fn_outputs, strict=True):
            np.testing.assert_allclose(g["logprobs"].to_numpy(), w["logprobs"].to_numpy(), rtol=0, atol=ATOL)
        got_opt = remote.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
        want_opt = local.optim_step(ts.AdamParams(learning_rate=5e-2)).result()
        assert got_opt.metrics is not None and want_opt.metrics is not None
        assert got_opt.metrics["grad_norm:max"] == pytest.approx(want_opt.metrics["grad_norm:max"], rel=1e-4)

    # After two steps the weights agree: so do forward logprobs.
    probe = [sdk_datum(t, w) for t, w in BATCH[:1]]
    got_lp = remote.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    want_lp = local.forward([sequence_datum(*BATCH[0])], "cross_entropy").result()
    np.testing.assert_allclose(got_lp, want_lp.loss_fn_outputs[0]["logprobs"].to_numpy(), rtol=0, atol=ATOL)

    sampler = remote.save_weights_and_get_sampling_client().result()
    local_sampler = local.save_weights_and_get_sampling_client().result()
    prompt = [2, 7, 1, 8]
    got_s = sampler.sample(
        tinker.ModelInput.from_ints(prompt), num_samples=3, sampling_params=tinker.SamplingParams(max_tokens=6, seed=11)
    ).result()
    want_s = local_sampler.sample(
        ts.ModelInput.from_ints(prompt), num_samples=3, sampling_params=ts.SamplingParams(max_tokens=6, seed=11)
    ).result()
    assert [list(s.tokens) for s in got_s.sequences] == [s.tokens for s in want_s.sequences]
    for g, w in zip(got_s.sequences, want_s.sequences, strict=True):
        assert g.stop_reason == w.stop_reason
        np.testing.assert_allclose(g.logprobs, w.logprobs or [], rtol=0, atol=ATOL)
    got_p = sampler.compute_logprobs(tinker.ModelInput.from_ints(prompt)).result()
    want_p = local_sampler.compute_logprobs(ts.ModelInput.from_ints(prompt)).result()
    assert got_p[0] is None and want_p[0] is None
    np.testing.assert_allclose(got_p[1:], want_p[1:], rtol=0, atol=ATOL)


def test_checkpoints_round_trip_through_the_sdk(servers: tuple[Any, ts.ServiceClient, str]) -> None:
    sdk, _, base = servers
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=1).result()
    tc.forward_backward([sdk_datum(*BATCH[0])], "cross_entropy").result()
    tc.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
    path = tc.save_state("after-one").result().path
    assert path.startswith("tinker://") and path.endswith("/weights/after-one")
    sampler_path = tc.save_weights_for_sampler("s1").result().path
    assert sampler_path.endswith("/sampler_weights/s1")

    resumed = sdk.create_training_client_from_state_with_optimizer(path).result()
    probe = [sdk_datum(*BATCH[1])]
    a = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    b = resumed.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    np.testing.assert_array_equal(a, b)

    from_path = sdk.create_sampling_client(model_path=sampler_path)  # the SDK returns a future here
    lp = from_path.result().compute_logprobs(tinker.ModelInput.from_ints(BATCH[1][0])).result()
    np.testing.assert_allclose(lp[1:], a, rtol=0, atol=1e-5)


def test_a_rejected_request_fails_its_future_and_changes_nothing(servers: tuple[Any, ts.ServiceClient, str]) -> None:
    sdk, _, base = servers
    tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=2).result()
    probe = [sdk_datum(*BATCH[0])]
    before = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    bad = tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]},  # one short
    )
    with pytest.raises(Exception, match="target_tokens"):
        tc.forward_backward([bad], "cross_entropy").result()
    with pytest.raises(Exception, match="loss_fn"):
        tc.forward_backward(probe, "no_such_loss").result()
    tc.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()  # no gradient accumulated: no change
    after = tc.forward(probe, "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    np.testing.assert_array_equal(before, after)


def test_wrong_api_key_is_refused(tmp_path: Path) -> None:
    with ts.ServiceClient(backend="mock") as served, TinkerServer(served, api_key=KEY) as server:
        import httpx

        reply = httpx.post(f"{server.url}/api/v1/healthz", headers={"X-API-Key": "tml-wrong"})
        assert reply.status_code == 401
        ok = httpx.post(f"{server.url}/api/v1/healthz", headers={"X-API-Key": KEY})
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        missing = httpx.post(
            f"{server.url}/api/v1/get_info", headers={"X-API-Key": KEY}, json={"model_id": "nope:train:0"}
        )
        assert missing.status_code == 404 and "nope:train:0" in missing.json()["error"]


def test_ragged_soft_target_outputs_keep_each_datums_shape(tmp_path: Path) -> None:
    """(N, K) targets with a different K per datum, in one request: the server sends one ArrayRecord
    per run of equal trailing shapes (a BatchedTensor has one trailing shape), and the SDK's
    logprobs have each datum's own shape and equal the in-process ones exactly (mock backend)."""
    targets = [[[1, 2, 3]] * 4, [[5]] * 2, [[6]] * 3, [[7, 8]] * 2]
    with (
        ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "a")) as served,
        TinkerServer(served, api_key=KEY) as server,
        ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "b")) as reference,
    ):
        remote = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        tc = remote.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
        local = reference.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()

        def data(types: Any) -> list[Any]:  # the same datums as SDK types (``tinker``) or ours (``ts``)
            return [
                types.Datum(
                    model_input=types.ModelInput.from_ints(list(range(10, 10 + len(t)))),
                    loss_fn_inputs={
                        "target_tokens": types.TensorData.from_numpy(np.asarray(t, dtype=np.int64)),
                        "weights": types.TensorData.from_numpy(np.full(np.shape(t), 0.5, dtype=np.float32)),
                    },
                )
                for t in targets
            ]

        got = tc.forward(data(tinker), "cross_entropy").result()
        want = local.forward(data(ts), "cross_entropy").result()
        assert [list(o["logprobs"].shape or []) for o in got.loss_fn_outputs] == [[4, 3], [2, 1], [3, 1], [2, 2]]
        for g, w in zip(got.loss_fn_outputs, want.loss_fn_outputs, strict=True):
            np.testing.assert_array_equal(g["logprobs"].to_numpy(), w["logprobs"].to_numpy())
        assert got.metrics["loss:sum"] == want.metrics["loss:sum"]
        remote.close("success").result()
