"""The FSDP backend on 2 CPU ranks (gloo) against the torch backend in this process.

One scripted session (several clients, accumulation, losses, custom loss, steps, save, load,
samplers) runs on ``torch`` and on ``fsdp`` with ``world_size=2``; losses, logprobs, weights
after steps and seeded tokens must agree within the fp32 tolerance class (atol 1e-4 on
per-token values, rtol 1e-4 on sums; tokens exactly). Checkpoints cross world sizes and
backends. Killing one rank with SIGKILL fails the pending futures with an error naming the rank,
leaves no process behind, and a new client from the last checkpoint continues with the loss of
the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.backends.fsdp import FsdpBackend, RankFailedError, WorkerStartError

from _support import rl_datum, sequence_datum

MODEL = "tiny-llama"
TOKEN_ATOL = 1e-4  # fp32 class, per-token values
SUM_RTOL = 1e-4  # fp32 class, sums
#: ``eps`` well above float32 rounding of the gradients: with the default 1e-8, Adam's first steps
#: move every element by about ``lr * sign(g)``, so an element whose gradient is rounding noise (a
#: row split across ranks rounds differently from one pass) moves by a full ``lr`` either way, and
#: the comparisons below would measure that noise (1.4e-4 relative on a loss sum after three steps
#: on an Intel AVX-512 CPU) instead of the semantics. Optimizer state still matters at this ``lr``.
ADAM = ts.AdamParams(learning_rate=1e-2, grad_clip_norm=1.0, eps=1e-3)


def _batch(offset: int, count: int) -> list[ts.Datum]:
    return [sequence_datum([(7 * i + 3 * j + offset) % 300 + 1 for j in range(6 + 3 * i)]) for i in range(count)]


def _rl_batch() -> list[ts.Datum]:
    data = []
    for i in range(3):
        tokens = [(11 * i + 5 * j) % 250 + 2 for j in range(8 + i)]
        n = len(tokens) - 1
        data.append(rl_datum(tokens, [0.5 - 0.3 * i] * n, [-2.0 - 0.1 * j for j in range(n)]))
    return data


def _group_batch() -> list[ts.Datum]:
    """Four completions of one prompt, as GRPO samples them: the engine runs the prompt once
    (``prefix_layout.py``); advantages are zero on the prompt."""
    prompt = [(7 * j) % 250 + 3 for j in range(12)]
    data = []
    for i in range(4):
        tokens = prompt + [(13 * i + 3 * j) % 250 + 1 for j in range(4 + i % 2)]
        n, start = len(tokens) - 1, len(prompt) - 1
        data.append(rl_datum(tokens, [0.0] * start + [0.4 - 0.25 * i] * (n - start), [-3.0] * n))
    return data


def _custom_loss(data: list[ts.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    loss = sum(((lp + 1.0) ** 2).sum() for lp in logprobs)
    assert isinstance(loss, torch.Tensor)
    return loss, {"custom:sum": float(loss.detach())}


def _weights(tc: ts.TrainingClient) -> dict[str, np.ndarray]:
    state = tc.read_state().result()
    return {k: np.asarray(v) for k, v in state.weights.items()} | {
        f"grad/{k}": np.asarray(v) for k, v in state.grads.items()
    }


def _session(svc: ts.ServiceClient) -> dict[str, Any]:
    """The scripted session; returns every number it saw, by name."""
    out: dict[str, Any] = {}
    a = svc.create_lora_training_client(MODEL, rank=4, seed=0).result()
    b = svc.create_lora_training_client(MODEL, rank=8, seed=1, train_mlp=False).result()
    for step in range(2):  # accumulation: two forward_backward calls per step on a; odd batch sizes
        fa1 = a.forward_backward(_batch(step, 3), "cross_entropy")
        fb_ = b.forward_backward(_rl_batch(), "importance_sampling")
        fa2 = a.forward_backward(_batch(step + 10, 1), "cross_entropy")
        for name, fut in (("a1", fa1), ("b", fb_), ("a2", fa2)):
            r = fut.result()
            out[f"loss/{name}/{step}"] = r.metrics["loss:sum"]
            for i, o in enumerate(r.loss_fn_outputs):
                out[f"lp/{name}/{step}/{i}"] = o["logprobs"].to_numpy()
        out[f"grads/a/{step}"] = _weights(a)
        out[f"norm/a/{step}"] = a.optim_step(ADAM).result().metrics["grad_norm:max"]
        out[f"norm/b/{step}"] = b.optim_step(ADAM).result().metrics["grad_norm:max"]
    fwd = a.forward(_batch(20, 2), "cross_entropy").result()
    out["loss/forward"] = fwd.metrics["loss:sum"]
    custom = a.forward_backward_custom(_batch(30, 2), _custom_loss).result()
    out["loss/custom"] = custom.metrics["custom:sum"]
    a.optim_step(ADAM).result()
    ppo = b.forward_backward(_rl_batch(), "ppo").result()
    out["loss/ppo"] = ppo.metrics["loss:sum"]
    b.optim_step(ADAM).result()
    group = b.forward_backward(_group_batch(), "importance_sampling").result()
    out["loss/group"] = group.metrics["loss:sum"]
    for i, o in enumerate(group.loss_fn_outputs):
        out[f"lp/group/{i}"] = o["logprobs"].to_numpy()
    b.optim_step(ADAM).result()
    out["weights/a"] = _weights(a)
    out["weights/b"] = _weights(b)
    saved = a.save_state("a-state").result().path
    c = svc.create_training_client_from_state_with_optimizer(saved).result()
    out["loss/c"] = c.forward_backward(_batch(40, 3), "cross_entropy").result().metrics["loss:sum"]
    c.optim_step(ADAM).result()
    out["weights/c"] = _weights(c)
    d = svc.create_training_client_from_state(saved).result()  # weights only: fresh AdamW
    d.forward_backward(_batch(40, 3), "cross_entropy").result()
    d.optim_step(ADAM).result()
    out["weights/d"] = _weights(d)
    b_sampler = b.save_weights_and_get_sampling_client("b-weights").result()
    snapshot = c.save_weights_and_get_sampling_client().result()
    base = svc.create_sampling_client(base_model=MODEL).result()
    params = ts.SamplingParams(max_tokens=6, temperature=1.0, seed=17)
    prompt = ts.ModelInput.from_ints([5, 9, 14, 2, 33])
    for name, sampler in (("b", b_sampler), ("snapshot", snapshot), ("base", base)):
        r = sampler.sample(prompt, 3, params, include_prompt_logprobs=True, topk_prompt_logprobs=2).result()
        out[f"tokens/{name}"] = [list(s.tokens) for s in r.sequences]
        out[f"slp/{name}"] = np.array([lp for s in r.sequences for lp in s.logprobs])
        out[f"plp/{name}"] = np.array(r.prompt_logprobs[1:])
    for client in (a, b, c, d):
        client.release() if hasattr(client, "release") else None
    return out


def _compare(torch_out: dict[str, Any], fsdp_out: dict[str, Any]) -> None:
    assert torch_out.keys() == fsdp_out.keys()
    for key, ref in torch_out.items():
        got = fsdp_out[key]
        if key.startswith("tokens/"):
            assert got == ref, key
        elif isinstance(ref, dict):
            assert ref.keys() == got.keys(), key
            for name in ref:
                np.testing.assert_allclose(got[name], ref[name], atol=TOKEN_ATOL, rtol=0, err_msg=f"{key}/{name}")
        elif isinstance(ref, float):
            np.testing.assert_allclose(got, ref, rtol=SUM_RTOL, atol=TOKEN_ATOL, err_msg=key)
        else:
            np.testing.assert_allclose(got, ref, atol=TOKEN_ATOL, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fsdp-ckpt")


@pytest.fixture(scope="module")
def fsdp_service(ckpt: Path) -> Iterator[ts.ServiceClient]:
    svc = ts.ServiceClient(backend="fsdp", world_size=2, checkpoint_dir=str(ckpt))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def torch_service(ckpt: Path) -> Iterator[ts.ServiceClient]:
    svc = ts.ServiceClient(backend="torch", checkpoint_dir=str(ckpt))
    yield svc
    svc.close()


def test_session_matches_torch(torch_service: ts.ServiceClient, fsdp_service: ts.ServiceClient) -> None:
    reference = _session(torch_service)
    got = _session(fsdp_service)
    _compare(reference, got)
    # the session really trained: weights moved and the two clients differ
    assert np.abs(got["weights/a"]["model.layers.0.self_attn.q_proj.lora_B"]).max() > 1e-3
    assert got["tokens/b"] != got["tokens/base"]


def test_base_is_sharded_over_ranks(fsdp_service: ts.ServiceClient) -> None:
    fsdp_service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    backend = fsdp_service.backend
    assert isinstance(backend, FsdpBackend)
    per_rank = backend.engine.parameter_bytes()[MODEL]["base"]  # type: ignore[attr-defined]
    full = sum(p.numel() * p.element_size() for p in _plain_model().parameters())
    assert 0.45 * full <= per_rank <= 0.55 * full, (per_rank, full)


def _plain_model() -> Any:
    from tinker_std.backends.torch.models import builtin_path, load_causal_lm

    return load_causal_lm(str(builtin_path(MODEL)), torch.float32, torch.device("cpu"))


def test_checkpoints_cross_world_sizes_and_backends(
    torch_service: ts.ServiceClient, fsdp_service: ts.ServiceClient, ckpt: Path
) -> None:
    """fsdp(2) -> torch, torch -> fsdp(2), fsdp(2) -> fsdp(1): the next step's loss and weights agree."""
    data = _batch(50, 3)

    def train_and_save(svc: ts.ServiceClient, name: str) -> tuple[str, float, dict[str, np.ndarray]]:
        tc = svc.create_lora_training_client(MODEL, rank=4, seed=3).result()
        tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(ADAM).result()
        path = tc.save_state(name).result().path
        tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(ADAM).result()
        loss = tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        return path, loss, _weights(tc)

    def resume(svc: ts.ServiceClient, path: str) -> tuple[float, dict[str, np.ndarray]]:
        tc = svc.create_training_client_from_state_with_optimizer(path).result()
        tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(ADAM).result()
        loss = tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        return loss, _weights(tc)

    fsdp_path, fsdp_loss, fsdp_weights = train_and_save(fsdp_service, "x-fsdp")
    torch_path, torch_loss, torch_weights = train_and_save(torch_service, "x-torch")
    np.testing.assert_allclose(fsdp_loss, torch_loss, rtol=SUM_RTOL)
    folder = ckpt / Path(fsdp_path.removeprefix("tinker://")).parent.parent
    assert list(folder.glob("weights/.versions/*/optimizer.dcp/*.distcp")), "fsdp save_state is DCP"
    for svc, path, expected, weights in (
        (torch_service, fsdp_path, fsdp_loss, fsdp_weights),
        (fsdp_service, torch_path, torch_loss, torch_weights),
    ):
        loss, got = resume(svc, path)
        np.testing.assert_allclose(loss, expected, rtol=SUM_RTOL)
        for name in weights:
            np.testing.assert_allclose(got[name], weights[name], atol=TOKEN_ATOL, err_msg=name)
    with ts.ServiceClient(backend="fsdp", world_size=1, checkpoint_dir=str(ckpt)) as one:
        loss, _ = resume(one, fsdp_path)
    np.testing.assert_allclose(loss, fsdp_loss, rtol=SUM_RTOL)


def test_sampler_folder_is_a_standard_peft_adapter(fsdp_service: ts.ServiceClient, ckpt: Path) -> None:
    import peft

    tc = fsdp_service.create_lora_training_client(MODEL, rank=4, seed=5).result()
    tc.forward_backward(_batch(60, 2), "cross_entropy").result()
    tc.optim_step(ADAM).result()
    path = tc.save_weights_for_sampler("peft").result().path
    folder = ckpt / path.removeprefix("tinker://")
    model = peft.PeftModel.from_pretrained(_plain_model(), str(folder.resolve()))
    datum = _batch(61, 1)[0]
    ids = torch.tensor([datum.model_input.to_ints()])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    targets = datum.loss_fn_inputs["target_tokens"].to_torch().long()
    expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].numpy()
    got = tc.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=TOKEN_ATOL)


def test_bad_input_is_rejected_before_any_rank_changes_state(fsdp_service: ts.ServiceClient) -> None:
    tc = fsdp_service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    before = _weights(tc)
    too_long = sequence_datum(list(range(1, 300)))
    with pytest.raises(ts.BadRequestError):
        tc.forward_backward([*_batch(0, 2), too_long], "cross_entropy").result()
    with pytest.raises(ts.BadRequestError):
        tc.forward_backward(_batch(0, 2), "ppo").result()  # missing advantages / logprobs
    tc.optim_step(ADAM).result()
    after = _weights(tc)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    with pytest.raises(ts.NotFoundError):
        fsdp_service.create_training_client_from_state("tinker://nope/weights/x").result()
    # the group is still healthy
    assert tc.forward_backward(_batch(0, 1), "cross_entropy").result().metrics["loss:sum"] > 0


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def test_kill_a_rank(tmp_path: Path) -> None:
    data = _batch(70, 3)
    svc = ts.ServiceClient(backend="fsdp", world_size=2, checkpoint_dir=str(tmp_path))
    backend = svc.backend
    assert isinstance(backend, FsdpBackend)
    pids = [p.pid for p in backend.group.processes]
    tc = svc.create_lora_training_client(MODEL, rank=4, seed=9).result()
    tc.forward_backward(data, "cross_entropy").result()
    tc.optim_step(ADAM).result()
    path = tc.save_state("before-kill").result().path
    next_loss = tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
    tc.optim_step(ADAM).result()
    after_loss = tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]

    os.kill(pids[1], signal.SIGKILL)
    pending = [
        tc.forward_backward(data, "cross_entropy"),
        tc.optim_step(ADAM),
        tc.forward_backward(data, "cross_entropy"),
    ]
    for fut in pending:
        with pytest.raises(RankFailedError, match="rank 1") as info:
            fut.result(timeout=60)
        assert info.value.rank == 1
    assert _pids_alive(pids) == []  # the surviving rank was stopped too
    svc.close()

    with ts.ServiceClient(backend="fsdp", world_size=2, checkpoint_dir=str(tmp_path)) as again:
        resumed = again.create_training_client_from_state_with_optimizer(path).result()
        assert resumed.forward_backward(data, "cross_entropy").result().metrics["loss:sum"] == next_loss
        resumed.optim_step(ADAM).result()
        assert resumed.forward_backward(data, "cross_entropy").result().metrics["loss:sum"] == after_loss
        group_pids = [p.pid for p in again.backend.group.processes]  # type: ignore[attr-defined]
    assert _pids_alive(group_pids) == []  # close() leaves no rank behind


def test_worker_start_failure_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:  # bound, not listening: rank 0 cannot bind, rank 1 keeps retrying
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(WorkerStartError, match="rank 0") as info:
            FsdpBackend(world_size=2, checkpoint_dir=str(tmp_path), master_port=port, start_timeout=120)
    assert "address already in use" in str(info.value).lower() or "errno" in str(info.value).lower()


@pytest.mark.slow
def test_attach_to_ranks_launched_by_torchrun(tmp_path: Path) -> None:
    """The documented multi-node path on one node: torchrun starts the ranks, the ServiceClient
    waits for them at ``attach``; losses match the torch backend's."""
    import secrets
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = secrets.token_hex(16)
    env = {**os.environ, "TINKER_STD_FSDP_AUTHKEY": key}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    log = tmp_path / "torchrun.log"
    launcher = subprocess.Popen(
        [*torchrun, "-m", "tinker_std.backends.fsdp.worker", "--connect", f"127.0.0.1:{port}"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    data = _batch(80, 3)
    try:
        with ts.ServiceClient(
            backend="fsdp",
            world_size=2,
            attach=f"127.0.0.1:{port}",
            authkey=key,
            checkpoint_dir=str(tmp_path),
            start_timeout=120,
        ) as svc:
            tc = svc.create_lora_training_client(MODEL, rank=4, seed=2).result()
            tc.forward_backward(data, "cross_entropy").result()
            tc.optim_step(ADAM).result()
            got = tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        with ts.ServiceClient(backend="torch", checkpoint_dir=str(tmp_path)) as ref_svc:
            ref = ref_svc.create_lora_training_client(MODEL, rank=4, seed=2).result()
            ref.forward_backward(data, "cross_entropy").result()
            ref.optim_step(ADAM).result()
            expected = ref.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
        np.testing.assert_allclose(got, expected, rtol=SUM_RTOL)
        code = launcher.wait(timeout=120)
        assert code == 0, log.read_text(errors="replace")[-4000:]  # the ranks exit when the client closes
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


_PARENT_SCRIPT = """
import sys, time
import tinker_std as ts
svc = ts.ServiceClient(backend="fsdp", world_size=2, checkpoint_dir=sys.argv[1])
print(" ".join(str(p.pid) for p in svc.backend.group.processes), flush=True)
time.sleep(600)
"""


def test_ranks_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the user's process (no close, no atexit) still leaves no rank behind."""
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and _pids_alive(pids) == pids
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while _pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_alive(pids) == []
