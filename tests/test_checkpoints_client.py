"""Checkpoints through the client: resume, reset, snapshots, fresh-process loads (spec CKPT, SMP-14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts

from _support import MODEL, assert_states_equal, logprobs_of, make_service, state_arrays, text_batch

BATCHES = [text_batch(["first batch", "of text"]), text_batch(["second one"]), text_batch(["third", "and last"])]
ADAM = ts.AdamParams(learning_rate=1e-2, grad_clip_norm=1.0)


def train(tc: ts.TrainingClient, batches: list[list[ts.Datum]]) -> list[float]:
    losses = []
    for batch in batches:
        losses.append(tc.forward_backward(batch, "cross_entropy").result().metrics["loss:sum"])
        tc.optim_step(ADAM).result()
    return losses


def test_resume_with_optimizer_reproduces_the_uninterrupted_run_bit_exactly(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        uninterrupted = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        train(uninterrupted, BATCHES[:1])
        path = uninterrupted.save_state("after-one").result().path
        assert path == f"tinker://{uninterrupted.model_id}/weights/after-one"
        expected = train(uninterrupted, BATCHES[1:])

        resumed = service.create_training_client_from_state_with_optimizer(path).result()
        assert resumed.model_id != uninterrupted.model_id
        assert train(resumed, BATCHES[1:]) == expected
        assert_states_equal(state_arrays(resumed), state_arrays(uninterrupted))


def test_load_without_optimizer_restores_weights_and_resets_adam(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        train(tc, BATCHES[:2])
        path = tc.save_weights_for_sampler("w").result().path
        assert path.endswith("/sampler_weights/w")
        loaded = service.create_training_client_from_state(path).result()
        original, restored = state_arrays(tc), state_arrays(loaded)
        for key in original:
            if key.startswith("weights/"):
                np.testing.assert_array_equal(restored[key], original[key])
            elif key != "step":
                assert np.all(restored[key] == 0), key
        assert restored["step"] == 0


def test_save_conflict_and_overwrite(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        tc.save_state("x").result()
        with pytest.raises(ts.ConflictError):
            tc.save_state("x").result()
        train(tc, BATCHES[:1])
        tc.save_state("x", overwrite=True).result()
        reloaded = service.create_training_client_from_state_with_optimizer(
            f"tinker://{tc.model_id}/weights/x"
        ).result()
        assert state_arrays(reloaded)["step"] == 1


def test_snapshot_sampler_does_not_move_when_training_continues(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        train(tc, BATCHES[:1])
        prompt = ts.ModelInput.from_ints(list(b"snapshot"))
        sampler = tc.save_weights_and_get_sampling_client().result()
        before = sampler.compute_logprobs(prompt).result()
        train(tc, BATCHES[1:])
        assert sampler.compute_logprobs(prompt).result() == before
        trained_now = tc.save_weights_and_get_sampling_client().result().compute_logprobs(prompt).result()
        assert trained_now != before


def test_rest_client_lists_and_deletes(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        tc.save_state("a").result()
        tc.save_weights_for_sampler("b").result()
        rest = service.create_rest_client()
        runs = rest.list_training_runs().result().training_runs
        assert [r.training_run_id for r in runs] == [tc.model_id] and runs[0].base_model == MODEL
        checkpoints = rest.list_checkpoints(tc.model_id).result().checkpoints
        assert {(c.checkpoint_id, c.checkpoint_type) for c in checkpoints} == {
            ("weights/a", "training"),
            ("sampler_weights/b", "sampler"),
        }
        rest.delete_checkpoint_from_tinker_path(f"tinker://{tc.model_id}/weights/a").result()
        left = rest.list_checkpoints(tc.model_id).result().checkpoints
        assert [c.checkpoint_id for c in left] == ["sampler_weights/b"]
        with pytest.raises(ts.NotFoundError):
            rest.delete_checkpoint(tc.model_id, "weights/a").result()


FRESH_PROCESS_SCRIPT = """
import sys, tinker_std as ts
svc = ts.ServiceClient(backend="mock", checkpoint_dir=sys.argv[1])
tc = svc.create_training_client_from_state(sys.argv[2]).result()
datum = ts.Datum(
    model_input=ts.ModelInput.from_ints(list(b"fresh proces")), loss_fn_inputs={"target_tokens": list(b"resh process")}
)
print(repr(tc.forward([datum]).result().metrics["loss:sum"]))
svc.close()
"""


def test_a_checkpoint_path_loads_in_a_fresh_process(tmp_path: Path) -> None:
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints(list(b"fresh proces")),
        loss_fn_inputs={"target_tokens": list(b"resh process")},
    )
    with make_service(tmp_path) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4, seed=3).result()
        train(tc, BATCHES)
        path = tc.save_state("portable").result().path
        expected = tc.forward([datum]).result().metrics["loss:sum"]
        assert logprobs_of(tc.forward([datum]).result())  # non-empty
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(tmp_path / "ckpt"), path],
        check=True,
        capture_output=True,
        text=True,
    )
    assert float(out.stdout.strip()) == expected
