"""The modal backend through Modal's calling path, offline.

``offline=True``: every call goes ``ModalBackend`` -> wire payload -> pickle -> the real
``TinkerStdTrainer`` (``app.py``) through Modal's ``.local()`` -> ``ContainerService`` -> the torch
engine on the tiny model, and back the same way. The torch backend in the same process is the
reference: on CPU in float32 both are bit-exact replays of the same engine, so results must be
equal, not merely close.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError, RequestFailedError

pytest.importorskip("modal")

from tinker_std.backends.modal import ContainerLostError, ModalBackend

MODEL = "tiny-llama"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tinker-std-cache"))


def _datum(tokens: list[int]) -> ts.Datum:
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


def _without_ids(response: ts.SampleResponse) -> dict[str, object]:
    """A response minus its random ``sequence_id``s."""
    dumped = response.model_dump()
    for seq in dumped["sequences"]:
        seq.pop("sequence_id")
    return dumped


DATA = [_datum([3, 17, 42, 99, 7, 12, 5, 64]), _datum([8, 8, 31, 2, 77])]


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[tuple[ts.ServiceClient, ts.ServiceClient]]:
    modal_client = ts.ServiceClient(backend="modal", offline=True, checkpoint_dir=str(tmp_path / "modal"))
    torch_client = ts.ServiceClient(backend="torch", checkpoint_dir=str(tmp_path / "torch"))
    yield modal_client, torch_client
    modal_client.close()
    torch_client.close()


def _train(client: ts.ServiceClient, steps: int) -> tuple[ts.TrainingClient, list[float]]:
    tc = client.create_lora_training_client(base_model=MODEL, rank=4, seed=1).result()
    losses = []
    for _ in range(steps):
        fb = tc.forward_backward(DATA, "cross_entropy")
        tc.optim_step(ts.AdamParams(learning_rate=5e-3))
        losses.append(fb.result().metrics["loss:sum"])
    return tc, losses


def test_training_and_sampling_equal_torch_exactly(clients: tuple[ts.ServiceClient, ts.ServiceClient]) -> None:
    modal_client, torch_client = clients
    assert isinstance(modal_client.backend, ModalBackend)
    tc_m, losses_m = _train(modal_client, 3)
    tc_t, losses_t = _train(torch_client, 3)
    assert losses_m == losses_t
    assert losses_m[2] < losses_m[0]  # it trains
    state_m, state_t = tc_m.read_state().result(), tc_t.read_state().result()
    assert state_m.step == state_t.step == 3
    for name, weights in state_t.weights.items():
        np.testing.assert_array_equal(state_m.weights[name], weights)
        np.testing.assert_array_equal(state_m.exp_avg_sq[name], state_t.exp_avg_sq[name])

    params = ts.SamplingParams(max_tokens=6, seed=11, temperature=0.8)
    prompt = ts.ModelInput.from_ints([3, 17, 42])
    targets = ts.TensorData.from_numpy(np.array([[17, 5], [42, -1]], dtype=np.int64))  # SDK-7
    outs = []
    for tc in (tc_m, tc_t):
        sampler = tc.save_weights_and_get_sampling_client().result()
        outs.append(
            sampler.sample(
                prompt,
                num_samples=3,
                sampling_params=params,
                include_prompt_logprobs=True,
                topk_prompt_logprobs=2,
                topk_sample_logprobs=2,
                target_prompt_logprobs=targets,
                prompt_alt_tokens_k=2,
            ).result()
        )
    assert _without_ids(outs[0]) == _without_ids(outs[1])
    extras = outs[0]  # the extras came back (an equality of two Nones would prove nothing)
    assert extras.target_prompt_logprobs is not None and extras.prompt_alt_tokens is not None
    assert all(seq.topk_logprobs is not None for seq in extras.sequences)
    assert tc_m.get_tokenizer().encode("hello world") == tc_t.get_tokenizer().encode("hello world")


def test_inflight_samplers_follow_the_newest_inflight_save_as_on_torch(
    clients: tuple[ts.ServiceClient, ts.ServiceClient],
) -> None:
    """spec/13 on modal: an inflight sampler keeps the weights of the newest inflight save while
    training steps run (INF-3) and moves with the next inflight save (INF-2); every figure equals
    torch's exactly."""
    prompt = ts.ModelInput.from_ints([3, 17, 42, 99, 7])
    runs = []
    for client in clients:
        tc, _ = _train(client, 1)
        inflight = tc.save_weights_and_get_sampling_client(kind="inflight").result()
        first = inflight.compute_logprobs(prompt).result()
        tc.forward_backward(DATA, "cross_entropy")
        tc.optim_step(ts.AdamParams(learning_rate=5e-3)).result()
        unchanged = inflight.compute_logprobs(prompt).result()
        tc.save_weights_and_get_sampling_client(kind="inflight").result()
        moved = inflight.compute_logprobs(prompt).result()
        runs.append((first, unchanged, moved))
    (first, unchanged, moved), reference = runs
    assert unchanged == first  # INF-3: an optim_step does not move the target
    assert moved != first  # INF-2: the next inflight save does
    assert runs[0] == reference


def test_concurrent_sampling_fans_out_and_matches_sequential(
    clients: tuple[ts.ServiceClient, ts.ServiceClient],
) -> None:
    modal_client, _ = clients
    sampler = modal_client.create_sampling_client(base_model=MODEL).result()
    params = [ts.SamplingParams(max_tokens=5, seed=seed) for seed in range(6)]
    prompt = ts.ModelInput.from_ints([5, 6, 7, 8])
    futures = [sampler.sample(prompt, num_samples=2, sampling_params=p) for p in params]  # in flight together
    together = [f.result() for f in futures]
    alone = [sampler.sample(prompt, num_samples=2, sampling_params=p).result() for p in params]
    assert [_without_ids(r) for r in together] == [_without_ids(r) for r in alone]
    assert len({tuple(r.sequences[0].tokens) for r in together}) > 1  # different seeds, different draws


def test_remote_errors_arrive_as_the_same_typed_errors_as_torch(
    clients: tuple[ts.ServiceClient, ts.ServiceClient],
) -> None:
    raised: list[list[Exception]] = []
    for client in clients:
        tc = client.create_lora_training_client(base_model=MODEL, rank=4).result()
        errors: list[Exception] = []
        path = tc.save_weights_for_sampler("s").result().path
        with pytest.raises(ConflictError) as conflict:
            tc.save_weights_for_sampler("s").result()
        errors.append(conflict.value)
        with pytest.raises(BadRequestError) as bad:  # optimizer state from sampler weights: the engine refuses
            client.create_training_client_from_state_with_optimizer(path).result()
        errors.append(bad.value)
        with pytest.raises(NotFoundError) as missing:
            client.create_lora_training_client(base_model="no-such-model", rank=4).result()
        errors.append(missing.value)
        raised.append(errors)
    for remote, local in zip(*raised, strict=True):
        assert type(remote) is type(local)
        assert _without_run_ids(str(remote)) == _without_run_ids(str(local))
        if isinstance(local, BadRequestError):
            assert remote.field == local.field  # type: ignore[attr-defined]
    assert "no-such-model" in str(raised[0][2])


def test_engine_errors_raised_in_the_container_keep_their_type(tmp_path: Path) -> None:
    """Below the client layer's checks: the error is raised by the engine inside the container."""
    import asyncio

    backend = ModalBackend(offline=True, checkpoint_dir=str(tmp_path))
    try:
        envelope = backend.handle(MODEL).forward_backward.remote(
            {
                "model_id": "torch-000000000000",
                "data": [],
                "loss_fn": "cross_entropy",
                "loss_fn_config": {},
                "backward": True,
            }
        )
        assert envelope["error"]["type"] == "NotFoundError"
        backend._base_of["torch-000000000000"] = MODEL
        with pytest.raises(NotFoundError, match="torch-000000000000"):
            asyncio.run(backend.optim_step("torch-000000000000", ts.AdamParams(learning_rate=1e-3)))
    finally:
        backend.factory.close()


def _without_run_ids(message: str) -> str:
    return re.sub(r"torch-[0-9a-f]{12}", "<run>", message)


def test_lost_container_fails_clearly_and_training_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    client = ts.ServiceClient(backend="modal", offline=True, checkpoint_dir=str(tmp_path / "ckpt"))
    try:
        tc, _ = _train(client, 2)
        path = tc.save_state("step2").result().path
        expected = tc.forward(DATA, "cross_entropy").result().metrics["loss:sum"]
        backend = client.backend
        assert isinstance(backend, ModalBackend)
        backend.handle(MODEL).restart()  # the container is preempted / scaled down
        with pytest.raises(ContainerLostError) as lost:
            tc.forward(DATA, "cross_entropy").result()
        assert isinstance(lost.value, RequestFailedError) and lost.value.category == "server"
        message = str(lost.value)
        assert tc.model_id in message and "create_training_client_from_state" in message
        resumed = client.create_training_client_from_state_with_optimizer(path).result()
        assert resumed.forward(DATA, "cross_entropy").result().metrics["loss:sum"] == expected
        assert resumed.read_state().result().step == 2
    finally:
        client.close()


def test_unknown_ids_are_not_reported_as_lost_containers(tmp_path: Path) -> None:
    client = ts.ServiceClient(backend="modal", offline=True, checkpoint_dir=str(tmp_path))
    try:
        with pytest.raises(NotFoundError) as err:
            client.create_training_client_from_state("tinker://nobody/weights/none").result()
        assert not isinstance(err.value, ContainerLostError)
    finally:
        client.close()


def test_spawned_calls_run_concurrently_in_the_local_container(tmp_path: Path) -> None:
    """The offline handle's .spawn() runs on a pool, as inputs of a @modal.concurrent container do."""
    backend = ModalBackend(offline=True, checkpoint_dir=str(tmp_path), max_inputs=4)
    try:
        handle = backend.handle(MODEL)
        calls = [handle.get_server_capabilities.spawn({}) for _ in range(4)]
        results = [c.get(timeout=120) for c in calls]
        assert all("result" in r for r in results)
        assert len({r["instance"] for r in results}) == 1  # one container instance served them all
        assert isinstance(handle.executor, concurrent.futures.ThreadPoolExecutor)
    finally:
        backend.factory.close()
