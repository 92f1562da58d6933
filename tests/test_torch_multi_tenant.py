"""Multi-tenant batching of the torch backend: several clients' ``forward_backward`` in one pass.

The batched path (one forward/backward over every client's rows, each row through its own
adapter) must give what one pass per client gives. Tolerance: the fp32 class (``atol = 1e-4`` on
logprobs, losses, gradients and weights after an AdamW step). The two differ only by float32
rounding: the batched pass pads every row to the longest row of the group, which changes the
shapes of the reductions (measured: at most 6e-6 on the tiny model).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.backends.torch import TorchBackend, TorchEngine
from tinker_std.backends.torch.batching import PathChooser
from tinker_std.backends.torch.engine_protocol import ForwardBackwardJob
from tinker_std.backends.torch.fast import packed, per_row
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import ContextLengthError, NotFoundError
from tinker_std.types import AdamParams, Datum, ForwardBackwardOutput, LoraConfig, ModelInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "tiny-llama"
ADAM = AdamParams(learning_rate=5e-2)
ATOL = 1e-4

#: Three tenants that differ in every way the batched pass must respect: rank, targets, the
#: number and lengths of rows, and the loss.
LORAS = [
    LoraConfig(rank=4, seed=1),
    LoraConfig(rank=8, seed=2, train_unembed=True),
    LoraConfig(rank=2, seed=3, train_mlp=False),
]


def datum(tokens: list[int], loss_inputs: dict[str, Any] | None = None) -> Datum:
    inputs: dict[str, Any] = {"target_tokens": tokens[1:], **(loss_inputs or {})}
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def tenant_jobs(model_ids: list[str], backward: bool = True) -> list[ForwardBackwardJob]:
    rng = np.random.default_rng(0)

    def tokens(n: int) -> list[int]:
        return [int(t) for t in rng.integers(3, 200, size=n)]

    ce = [datum(tokens(9)), datum(tokens(17))]
    is_rows = []
    prompt = tokens(10)  # three completions of one prompt: laid out as a prefix tree (prefix_layout.py)
    for n in (2, 5, 4):
        t = prompt + tokens(n)
        m = len(t) - 1
        is_rows.append(datum(t, {"logprobs": [-2.0] * m, "advantages": [0.0] * 9 + [0.5] * (m - 9)}))
    ppo = [datum(tokens(21), {"logprobs": [-3.0] * 20, "advantages": list(np.linspace(-1, 1, 20))})]
    return [
        ForwardBackwardJob(model_ids[0], ce, "cross_entropy", {}, backward),
        ForwardBackwardJob(model_ids[1], is_rows, "importance_sampling", {}, backward),
        ForwardBackwardJob(model_ids[2], ppo, "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, backward),
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "tinker-std-cache"


def make_engine(cache_dir: Path, tmp: Path, batching: Any) -> tuple[TorchEngine, list[str]]:
    engine = TorchEngine(CheckpointStore(tmp), device="cpu", cache_dir=cache_dir, batching=batching)
    ids = [engine.create_model(MODEL, lora).model_id for lora in LORAS]
    # Non-zero B so that every adapter changes the logits from the first pass on.
    for model_id in ids:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(7)
            for name, p in engine.training.models[model_id].params.items():
                if name.endswith("lora_B"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return engine, ids


@pytest.fixture(scope="module")
def engines(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    built = {mode: make_engine(cache_dir, tmp_path_factory.mktemp(mode), mode) for mode in ("batched", "serial")}
    yield built
    for engine, _ in built.values():
        engine.close()


def outputs_close(a: ForwardBackwardOutput, b: ForwardBackwardOutput) -> float:
    worst = abs(a.metrics["loss:sum"] - b.metrics["loss:sum"])
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        worst = max(worst, float(np.abs(x["logprobs"].to_numpy() - y["logprobs"].to_numpy()).max()))
    return worst


def test_batched_pass_equals_one_pass_per_client(engines: dict[str, Any]) -> None:
    """Two rounds of forward_backward + optim_step for three different tenants, batched vs serial:
    losses, logprobs, accumulated gradients and the weights after AdamW agree (fp32 tolerance)."""
    (batched, b_ids), (serial, s_ids) = engines["batched"], engines["serial"]
    worst = 0.0
    for _ in range(2):
        out_b = batched.forward_backward_many(tenant_jobs(b_ids))
        out_s = serial.forward_backward_many(tenant_jobs(s_ids))
        for ob, os_ in zip(out_b, out_s, strict=True):
            assert isinstance(ob, ForwardBackwardOutput) and isinstance(os_, ForwardBackwardOutput)
            worst = max(worst, outputs_close(ob, os_))
            assert ob.metrics["loss:sum"] != 0.0
        for bid, sid in zip(b_ids, s_ids, strict=True):
            sb, ss = batched.read_state(bid), serial.read_state(sid)
            assert any(np.abs(g).max() > 0 for g in ss.grads.values())
            for name in ss.grads:
                np.testing.assert_allclose(sb.grads[name], ss.grads[name], atol=ATOL, rtol=0)
                worst = max(worst, float(np.abs(sb.grads[name] - ss.grads[name]).max()))
            batched.optim_step(bid, ADAM)
            serial.optim_step(sid, ADAM)
            sb, ss = batched.read_state(bid), serial.read_state(sid)
            for name in ss.weights:
                np.testing.assert_allclose(sb.weights[name], ss.weights[name], atol=ATOL, rtol=0)
    assert worst <= ATOL
    print(f"largest batched-vs-serial difference: {worst:.3g}")


def test_batched_gradients_match_each_clients_own_pass(engines: dict[str, Any]) -> None:
    """Each adapter's gradient from the shared pass is its own loss's gradient: compared with
    ``forward_backward`` of that client alone, from the same weights, every tensor of every
    tenant (including the lm_head adapter of the second and the missing MLP of the third)."""
    batched, ids = engines["batched"]
    jobs = tenant_jobs(ids)
    alone = []
    for job in jobs:
        out = batched.forward_backward(job.model_id, job.data, job.loss_fn, job.loss_fn_config, True)
        alone.append((out, batched.read_state(job.model_id).grads))
        batched.optim_step(job.model_id, AdamParams(learning_rate=0.0))  # clears the gradient only
    together = batched.forward_backward_many(jobs)
    packs = packed.available() and batched.settings.packed_weights
    for job, (out, grads), shared in zip(jobs, alone, together, strict=True):
        assert isinstance(shared, ForwardBackwardOutput)
        assert outputs_close(out, shared) <= ATOL
        if packs:  # each job's rows keep their layout and shapes: the same bits
            for x, y in zip(out.loss_fn_outputs, shared.loss_fn_outputs, strict=True):
                np.testing.assert_array_equal(x["logprobs"].to_numpy(), y["logprobs"].to_numpy())
        state = batched.read_state(job.model_id)
        assert set(state.grads) == set(grads)
        for name, g in grads.items():
            np.testing.assert_allclose(state.grads[name], g, atol=ATOL, rtol=0)
            if packs:
                np.testing.assert_array_equal(state.grads[name], g, err_msg=name)
        batched.optim_step(job.model_id, AdamParams(learning_rate=0.0))
    assert any(name.startswith("lm_head") for name in batched.read_state(ids[1]).weights)
    assert not any("mlp" in name for name in batched.read_state(ids[2]).weights)


def test_the_multi_tenant_pass_fuses_each_clients_lora_layers(engines: dict[str, Any]) -> None:
    """Every LoRA linear of a mixed batch runs ``lora_linear.segment_forward`` (the fused products
    of a single-client pass), none peft's per-row hook (with ``fused``: ``TorchSettings.fused_lora``)."""
    engine, ids = engines["batched"]
    model = engine.bases.loaded[MODEL].model
    segments = [(0, 1, engine.training.models[ids[0]].adapter, 5), (1, 2, engine.training.models[ids[2]].adapter, 4)]
    with per_row.per_row_adapters(model, segments, fused=True):
        fused = [m for m in model.modules() if "forward" in m.__dict__]
        hooked = [m for m in model.modules() if m._forward_hooks]
    # the first client adapts every projection and lm_head (train_unembed's default), the third
    # attention only: every layer one of them adapts is fused, the others are left alone
    assert len(fused) == 7 * model.config.num_hidden_layers + 1 and not hooked
    with per_row.per_row_adapters(model, segments, fused=False):
        assert not [m for m in model.modules() if "forward" in m.__dict__]


def test_a_bad_job_fails_alone_and_changes_nothing(engines: dict[str, Any]) -> None:
    batched, ids = engines["batched"]
    jobs = tenant_jobs(ids)
    too_long = datum(list(range(3, 3 + 300)))
    bad = ForwardBackwardJob(ids[1], [too_long], "cross_entropy", {}, True)
    before = batched.read_state(ids[1])
    results = batched.forward_backward_many(
        [jobs[0], bad, jobs[2], ForwardBackwardJob("nope", jobs[0].data, "cross_entropy", {}, True)]
    )
    assert isinstance(results[0], ForwardBackwardOutput) and isinstance(results[2], ForwardBackwardOutput)
    assert isinstance(results[1], ContextLengthError) and "data[0].model_input" in str(results[1])
    assert isinstance(results[3], NotFoundError)
    after = batched.read_state(ids[1])
    for name in before.weights:
        np.testing.assert_array_equal(before.grads[name], after.grads[name])
        np.testing.assert_array_equal(before.weights[name], after.weights[name])
    for model_id in (ids[0], ids[2]):
        batched.optim_step(model_id, AdamParams(learning_rate=0.0))


def test_forward_only_jobs_leave_gradients_alone(engines: dict[str, Any]) -> None:
    batched, ids = engines["batched"]
    before = [batched.read_state(i).grads for i in ids]
    out = batched.forward_backward_many(tenant_jobs(ids, backward=False))
    assert all(isinstance(o, ForwardBackwardOutput) for o in out)
    for model_id, grads in zip(ids, before, strict=True):
        for name, g in batched.read_state(model_id).grads.items():
            np.testing.assert_array_equal(g, grads[name])


def test_path_chooser_measures_then_keeps_the_faster_path() -> None:
    chooser = PathChooser("auto", probes=2, reprobe_every=10)
    assert chooser.choose(1, 512) == "serial"  # one client: nothing to batch
    seen = []
    for _ in range(4):
        path = chooser.choose(4, 500)
        seen.append(path)
        chooser.record(4, 500, path, 1.0 if path == "batched" else 3.0)
    assert sorted(seen) == ["batched", "batched", "serial", "serial"]
    picks = [chooser.choose(4, 510) for _ in range(10)]  # same signature: 510 rounds to 512
    assert picks.count("batched") == 9 and picks[-1] == "serial"  # the 10th re-measures the other
    assert chooser.preferred() == {(4, 512): "batched"}
    assert PathChooser("serial").choose(8, 100) == "serial"
    assert PathChooser("batched").choose(8, 100) == "batched"
    with pytest.raises(ValueError, match="batching"):
        PathChooser("sometimes")  # type: ignore[arg-type]


def test_concurrent_clients_share_passes_through_the_backend(tmp_path: Path, cache_dir: Path) -> None:
    """Through the real queue: four clients submit at once; their forward_backward requests reach
    the engine as one group, and every client ends where its serial twin does."""
    os.environ["TINKER_STD_CACHE_DIR"] = str(cache_dir)
    groups: list[int] = []

    def run(batching: str) -> list[Any]:
        backend = TorchBackend(checkpoint_dir=tmp_path / batching, device="cpu", batching=batching)
        many = backend.engine.forward_backward_many

        def spy(jobs: Any) -> Any:
            groups.append(len(jobs))
            return many(jobs)

        backend.queue._run_group["forward_backward"] = spy

        async def main() -> list[Any]:
            specs = [await backend.create_model(MODEL, LoraConfig(rank=4, seed=s)) for s in range(4)]
            data = [[datum(list(range(5 + s, 30 + 2 * s)))] for s in range(4)]
            for _ in range(3):
                await asyncio.gather(
                    *(
                        backend.forward_backward(s.model_id, d, "cross_entropy", {}, True)
                        for s, d in zip(specs, data, strict=True)
                    )
                )
                await asyncio.gather(*(backend.optim_step(s.model_id, ADAM) for s in specs))
            states = [await backend.read_state(s.model_id) for s in specs]
            await backend.close()
            return states

        return asyncio.run(main())

    batched = run("batched")
    assert max(groups) == 4, groups
    groups.clear()
    serial = run("serial")
    for a, b in zip(batched, serial, strict=True):
        assert a.step == b.step == 3
        for name in a.weights:
            np.testing.assert_allclose(a.weights[name], b.weights[name], atol=ATOL, rtol=0)


def test_service_clients_train_concurrently_with_auto_batching(tmp_path: Path, cache_dir: Path) -> None:
    os.environ["TINKER_STD_CACHE_DIR"] = str(cache_dir)
    svc = ts.ServiceClient(backend="torch", checkpoint_dir=str(tmp_path), device="cpu")
    clients = [svc.create_lora_training_client(base_model=MODEL, rank=4, seed=s).result() for s in range(3)]
    data = [datum(list(range(4, 40)))]
    losses: list[list[float]] = [[] for _ in clients]
    for _ in range(4):
        futures = [tc.forward_backward(data, "cross_entropy") for tc in clients]
        steps = [tc.optim_step(ADAM) for tc in clients]
        for i, f in enumerate(futures):
            losses[i].append(f.result().metrics["loss:sum"])
        for s in steps:
            s.result()
    for curve in losses:
        assert curve[-1] < curve[0] - 1.0, curve
    svc.close()


def test_groups_are_budgeted_by_their_stacked_layout(cache_dir: Path, tmp_path: Path) -> None:
    """A job laid out as a wide prefix tree pads the rows of the jobs it shares a pass with to its
    width: the group's size is counted on the stacked layout, not on the datums' lengths."""
    engine = TorchEngine(CheckpointStore(tmp_path), device="cpu", cache_dir=cache_dir, max_batch_tokens=1000)
    try:
        a, b = (engine.create_model(MODEL, LoraConfig(rank=2, seed=s)).model_id for s in (0, 1))
        rng = np.random.default_rng(3)
        prompt = [int(t) for t in rng.integers(3, 200, size=30)]
        tree = [datum(prompt + [int(t) for t in rng.integers(3, 200, size=20)]) for _ in range(4)]
        short = [datum([int(t) for t in rng.integers(3, 200, size=13)]) for _ in range(10)]
        jobs = [
            ForwardBackwardJob(a, tree, "cross_entropy", {}, True),
            ForwardBackwardJob(b, short, "cross_entropy", {}, True),
        ]
        layouts: dict[int, Any] = {}
        # by lengths 14 x 49 = 686 tokens would fit; stacked, 11 rows x the tree's width do not
        assert 14 * 49 <= 1000
        assert not engine.multi_tenant.joins(jobs, [0], 1, layouts)
        assert layouts[0].allowed is not None and layouts[0].input_ids.shape[0] == 1
        assert (1 + len(short)) * layouts[0].width > 1000
        both = [ForwardBackwardJob(b, short[:3], "cross_entropy", {}, True)]
        assert engine.multi_tenant.joins([jobs[0], *both], [0], 1, {})  # 4 rows x 109 fit
    finally:
        engine.close()
