"""``import tinker_std as tinker``: the SDK 0.38 patterns of issue 22 run unchanged in process
(RestClient response types with cursors, training run fields, sampler handles and pickling,
TensorData CSR, provenance and stable_reinforce as tinker-cookbook's ``rl_loop.py`` writes them,
partial prompt scoring), and every refused argument names itself (spec SDK-1)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as tinker
from tinker_std import types
from tinker_std.stability import StabilityRecords

BASE = "mock/tiny"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tinker.ServiceClient]:
    svc = tinker.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path / "ckpt"))
    yield svc
    svc.close()


def _train(tc: Any) -> None:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 5, 9, 14]), loss_fn_inputs={"target_tokens": [5, 9, 14, 3]}
    )
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()


def test_rest_client_returns_the_sdks_response_types(service: tinker.ServiceClient) -> None:
    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    _train(tc)
    state = tc.save_state("s1").result().path
    weights = tc.save_weights_for_sampler("w1").result().path
    other = service.create_lora_training_client(base_model=BASE, rank=8, seed=1).result()
    other.save_state("o1").result()
    rest = service.create_rest_client()
    listed = rest.list_checkpoints(tc.model_id).result()
    assert isinstance(listed, types.CheckpointsListResponse)
    assert [c.tinker_path for c in listed.checkpoints] == [state, weights]
    runs = rest.list_training_runs(limit=1).result()
    assert isinstance(runs, types.TrainingRunsResponse)
    assert runs.cursor.total_count == 2 and runs.cursor.limit == 1 and len(runs.training_runs) == 1
    second = rest.list_training_runs(limit=1, offset=1).result().training_runs
    assert {runs.training_runs[0].training_run_id, second[0].training_run_id} == {tc.model_id, other.model_id}
    run = rest.get_training_run(tc.model_id).result()
    assert (run.base_model, run.lora_rank, run.model_owner, run.is_lora, run.corrupted) == (
        BASE,
        4,
        "local",
        True,
        False,
    )
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state
    assert run.last_sampler_checkpoint is not None and run.last_sampler_checkpoint.tinker_path == weights
    assert run.last_request_time == listed.checkpoints[-1].time
    assert rest.get_training_run_by_tinker_path(weights).result().training_run_id == tc.model_id
    everything = rest.list_user_checkpoints().result()
    assert everything.cursor is not None and everything.cursor.total_count == 3
    assert {c.tinker_path for c in everything.checkpoints} >= {state, weights}
    page = rest.list_user_checkpoints(limit=2, offset=2).result()
    assert len(page.checkpoints) == 1 and page.checkpoints[0] == everything.checkpoints[2]
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run("no-such-run").result()
    for call, name in (
        (lambda: rest.list_training_runs(project_id="p"), "project_id"),
        (lambda: rest.list_training_runs(access_scope="everyone"), "access_scope"),
        (lambda: rest.list_user_checkpoints(limit=0), "limit"),
    ):
        with pytest.raises(tinker.BadRequestError) as err:
            call()
        assert err.value.field == name
    assert "external" in types.CheckpointType.__args__  # type: ignore[attr-defined]


PROMPT = [1, 7, 42, 99, 3]


def test_sampler_handles_and_pickles_reach_the_same_weights(service: tinker.ServiceClient, tmp_path: Path) -> None:
    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    _train(tc)
    prompt = types.ModelInput.from_ints(PROMPT)
    snapshot = tc.save_weights_and_get_sampling_client().result()
    expected = snapshot.compute_logprobs(prompt).result()
    again = tinker.SamplingClient.from_sampler_handle(snapshot.get_sampler_handle())
    assert again.compute_logprobs(prompt).result() == expected
    assert pickle.loads(pickle.dumps(snapshot)).compute_logprobs(prompt).result() == expected
    with pytest.raises(tinker.BadRequestError) as err:
        tinker.SamplingClient.from_sampler_handle(snapshot.get_sampler_handle(), api_key="tml-x")
    assert err.value.field == "api_key"
    with pytest.raises(tinker.BadRequestError):
        tinker.SamplingClient.from_sampler_handle("not a handle")
    # another process: a checkpoint's sampler is rebuilt from the same folder; a snapshot is refused
    saved = service.create_sampling_client(model_path=tc.save_weights_for_sampler("h").result().path).result()
    child = (
        "import pickle, sys, tinker_std as ts\n"
        "sc = pickle.loads(sys.stdin.buffer.read())\n"
        f"print(repr(sc.compute_logprobs(ts.ModelInput.from_ints({PROMPT})).result()))\n"
    )
    out = subprocess.run([sys.executable, "-c", child], input=pickle.dumps(saved), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert eval(out.stdout.decode()) == saved.compute_logprobs(prompt).result() == expected
    refused = subprocess.run(
        [sys.executable, "-c", child], input=pickle.dumps(snapshot), capture_output=True, timeout=120
    )
    assert refused.returncode != 0 and b"NotFoundError" in refused.stderr and b"snapshot" in refused.stderr


def test_sampler_lives_until_its_last_client_is_collected(service: tinker.ServiceClient) -> None:
    import gc

    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    snapshot = tc.save_weights_and_get_sampling_client().result()
    twin = tinker.SamplingClient.from_sampler_handle(snapshot.get_sampler_handle())
    del snapshot
    gc.collect()
    prompt = types.ModelInput.from_ints(PROMPT)
    assert twin.compute_logprobs(prompt).result()[1] is not None  # still served: one client is left


def test_tensor_data_accepts_the_sdks_csr_form() -> None:
    import tinker as sdk
    import torch

    dense = torch.tensor([[0, 0, 4], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    csr = sdk.TensorData.from_torch_sparse(dense)
    assert csr.sparse_crow_indices is not None  # the SDK did pick CSR for this tensor
    ours = types.TensorData(
        data=list(csr.data),
        dtype=csr.dtype,
        shape=csr.shape,
        sparse_crow_indices=csr.sparse_crow_indices,
        sparse_col_indices=csr.sparse_col_indices,
    )
    np.testing.assert_array_equal(ours.to_numpy(), dense.numpy())
    assert ours.sparse_crow_indices is None and ours.resolved_shape == [5, 3]
    with pytest.raises(ValueError):
        types.TensorData(data=[1], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1, 2], sparse_col_indices=[0])


def test_csr_tensor_data_pads_unlisted_cells_as_the_sdk_does() -> None:
    """tinker 0.38: a CSR tensor's unlisted cells take the ``pad_value`` given at conversion."""
    import tinker as sdk
    import torch

    dense = torch.full((6, 4), -1)
    dense[0, 1], dense[2, 0], dense[5, 3] = 5, 7, 0
    csr = sdk.TensorData.from_torch_sparse(dense, pad_value=-1)
    assert csr.sparse_crow_indices is not None
    ours = types.TensorData(
        data=list(csr.data),
        dtype=csr.dtype,
        shape=csr.shape,
        sparse_crow_indices=csr.sparse_crow_indices,
        sparse_col_indices=csr.sparse_col_indices,
    )
    for pad in (0, -1, 3):
        np.testing.assert_array_equal(ours.to_numpy(pad_value=pad), csr.to_numpy(pad_value=pad))
        assert ours.tolist(pad) == csr.tolist(pad)
    np.testing.assert_array_equal(ours.to_torch(-1).numpy(), dense.numpy())
    plain = types.TensorData(data=[0, 1], dtype="int64")
    assert plain.to_numpy(pad_value=-1).tolist() == [0, 1]  # a dense tensor has no unlisted cells


def test_sparse_target_prompt_logprobs_request_only_their_listed_cells(service: tinker.ServiceClient) -> None:
    """SDK-7 in process with the SDK's CSR form: an unlisted cell requests nothing (0.0, like -1),
    it is not read as token 0."""
    import torch

    training = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    sampler = training.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(PROMPT)
    params = types.SamplingParams(max_tokens=1, seed=0)
    dense_ids = torch.tensor([[-1, 5], [-1, -1], [7, -1], [-1, 0]])
    sparse = types.TensorData(
        data=[5, 7, 0], dtype="int64", shape=[4, 2], sparse_crow_indices=[0, 1, 1, 2, 3], sparse_col_indices=[1, 0, 1]
    )
    dense = types.TensorData.from_torch(dense_ids)
    got_sparse = sampler.sample(prompt, 1, params, target_prompt_logprobs=sparse).result().target_prompt_logprobs
    got_dense = sampler.sample(prompt, 1, params, target_prompt_logprobs=dense).result().target_prompt_logprobs
    assert got_sparse is not None and got_dense is not None
    np.testing.assert_array_equal(got_sparse.to_numpy(), got_dense.to_numpy())
    values = got_dense.to_numpy()
    assert values[0, 0] == 0.0 and values[1].tolist() == [0.0, 0.0]  # unrequested cells
    assert values[0, 1] < 0.0 and values[3, 1] < 0.0  # listed ids (token 0 included) are scored


def test_cookbook_rl_loop_with_stable_reinforce_runs_unchanged(service: tinker.ServiceClient) -> None:
    """tinker-cookbook 0.6.1 ``recipes/rl_loop.py``, its sampling and datum code as written."""
    training_client = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    sampling_client = training_client.save_weights_and_get_sampling_client(record_stability_info=True).result()
    prompt = types.ModelInput.from_ints(PROMPT)
    params = types.SamplingParams(max_tokens=6, seed=1, stop=[])
    result = sampling_client.sample(prompt=prompt, num_samples=4, sampling_params=params).result()
    rewards = [float(i % 2) for i in range(4)]
    advantages_G = [r - sum(rewards) / len(rewards) for r in rewards]
    datums = []
    for sequence, advantage in zip(result.sequences, advantages_G, strict=True):
        sampled_tokens, logprobs = sequence.tokens, sequence.logprobs
        assert logprobs is not None
        ob_len = prompt.length - 1
        model_input = prompt.append(types.EncodedTextChunk(tokens=sampled_tokens[:-1]))
        datum = types.Datum(
            model_input=model_input,
            loss_fn_inputs={
                "target_tokens": [0] * ob_len + sampled_tokens,
                "logprobs": [0.0] * ob_len + logprobs,
                "advantages": [0.0] * ob_len + [advantage] * (model_input.length - ob_len),
            },
        )
        datums.append(
            datum.with_provenance(
                model_input=[
                    types.PromptProvenanceSpan(sequence_id=sequence.sequence_id, length=prompt.length),
                    types.SampledProvenanceSpan(sequence_id=sequence.sequence_id, length=len(sampled_tokens) - 1),
                ],
                loss_fn_inputs=[
                    types.PromptProvenanceSpan(sequence_id=sequence.sequence_id, offset=1, length=prompt.length - 1),
                    types.SampledProvenanceSpan(sequence_id=sequence.sequence_id, length=len(sampled_tokens)),
                ],
            )
        )
    fwd_bwd = training_client.forward_backward(datums, loss_fn="stable_reinforce").result()
    # on-policy: L = -sum A * lp over the sampled tokens (LOSS-16)
    expected = sum(-a * sum(s.logprobs or []) for s, a in zip(result.sequences, advantages_G, strict=True))
    assert abs(fwd_bwd.metrics["loss:sum"] - expected) < 1e-4 * max(1.0, abs(expected))
    training_client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    with pytest.raises(ValueError):
        datums[0].with_provenance(model_input=[], loss_fn_inputs=[])  # miscounted tiling fails at the call site


def test_stability_records_expire_a_day_after_last_use() -> None:
    now = [0.0]
    records = StabilityRecords(clock=lambda: now[0])
    seq = types.SampledSequence(stop_reason="length", tokens=[3, 4], logprobs=[-1.0, -2.0], sequence_id="s")
    records.record([1, 2], [seq])
    now[0] = 23 * 3600.0
    assert records.get("s") is not None  # a use restarts the day
    now[0] = 46 * 3600.0
    assert records.get("s") is not None
    now[0] = 46 * 3600.0 + 24 * 3600.0
    assert records.get("s") is None and len(records) == 0


def test_every_tinker_std_argument_with_no_effect_is_refused_by_name(service: tinker.ServiceClient) -> None:
    """SDK-1 in process: the SDK arguments tinker-std does not implement name themselves."""
    tc = service.create_lora_training_client(base_model=BASE, rank=4, seed=0).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(PROMPT)
    params = types.SamplingParams(max_tokens=2)
    calls = {
        "prompt_alt_tokens_k": lambda: sampler.sample(prompt, 1, params, prompt_alt_tokens_k=-1),  # SDK-8: malformed
        # target_prompt_logprobs has its effect (SDK-7); with a row count other than len(prompt) - 1, refused
        "target_prompt_logprobs": lambda: sampler.sample(
            prompt, 1, params, target_prompt_logprobs=types.TensorData(data=[1] * 3, dtype="int64", shape=[3, 1])
        ),
        "kind": lambda: tc.save_weights_and_get_sampling_client(kind="live"),  # type: ignore[arg-type]
        # ttl_seconds and user_metadata have their effect in process (CKPT-13); malformed, refused by name
        "ttl_seconds": lambda: tc.save_state("t", ttl_seconds=0),
        "user_metadata": lambda: service.create_lora_training_client(base_model=BASE, user_metadata={"a": 1}),  # type: ignore[dict-item]
        "optimizer": lambda: service.create_lora_training_client(base_model=BASE, optimizer="dimuon"),  # type: ignore[arg-type]
        "base_model": lambda: service.create_sampling_client(
            model_path=tc.save_weights_for_sampler("b").result().path, base_model="other/model"
        ).result(),
    }
    for name, call in calls.items():
        with pytest.raises(tinker.BadRequestError) as err:
            call()
        assert err.value.field == name, (name, err.value)
