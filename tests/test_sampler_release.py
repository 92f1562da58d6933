"""Snapshot samplers are freed when their ``SamplingClient`` is gone (SMP-19)."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

import tinker_std as ts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wait_for(condition: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("backend", ["mock", "torch"])
def test_an_rl_style_loop_does_not_accumulate_snapshot_samplers(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path / "cache"))
    options = {"device": "cpu"} if backend == "torch" else {}
    base = "tiny-llama" if backend == "torch" else "mock/tiny"
    with ts.ServiceClient(backend=backend, checkpoint_dir=str(tmp_path / "ckpt"), **options) as svc:  # type: ignore[arg-type]
        impl = svc.backend
        samplers = impl.engine._samplers if backend == "torch" else impl._samplers  # type: ignore[attr-defined]
        tc = svc.create_lora_training_client(base_model=base, rank=4, seed=0).result()
        prompt = ts.ModelInput.from_ints([3, 4, 5])
        datum = ts.Datum(model_input=prompt, loss_fn_inputs={"target_tokens": [4, 5, 6]})
        kept = tc.save_weights_and_get_sampling_client().result()
        for _ in range(6):
            sampler = tc.save_weights_and_get_sampling_client().result()
            out = sampler.sample(prompt, 2, ts.SamplingParams(max_tokens=3, seed=1)).result()
            assert len(out.sequences) == 2
            tc.forward_backward([datum], "cross_entropy").result()
            tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
            del sampler
            gc.collect()
            assert wait_for(lambda: len(samplers) <= 2), len(samplers)
        # The sampler still referenced keeps working and keeps its weights.
        assert kept.sampler_id in samplers
        assert len(kept.sample(prompt, 1, ts.SamplingParams(max_tokens=2, seed=0)).result().sequences) == 1
        if backend == "torch":
            model = impl.engine.bases.loaded[base].model  # type: ignore[attr-defined]
            adapters = [name for name in model.peft_config if name.startswith("s_")]
            assert len(adapters) == 1, adapters  # only ``kept``'s copy is left
        # A request in flight when the last reference goes away still completes.
        pending = tc.save_weights_and_get_sampling_client().result().sample(prompt, 1, ts.SamplingParams(max_tokens=2))
        gc.collect()
        assert len(pending.result().sequences) == 1
        assert wait_for(lambda: len(samplers) == 1)
