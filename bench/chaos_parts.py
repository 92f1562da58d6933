"""Parts of the chaos and soak run (``bench/chaos_soak.py``, issue 21 item 7): the server as a
child process that can be SIGKILLed and restarted on the same port and checkpoint folder, the
deterministic per-client plan, the in-process replay it is compared with, and the check of every
acknowledged checkpoint against the server's own optimizer step counter.

Nothing here is a test double: the server is ``tinker-std serve`` (``python -m tinker_std.cli``),
the replay and the checkpoint check run the same backend in this process through
``tinker_std.ServiceClient``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import tinker_std as ts

KEY = "tml-chaos-soak"
TENANT = "default"  # the tenant of ``--api-key``
LEARNING_RATE = 1e-2
PROMPT = [1, 2, 3, 4]
#: losses of the server and of the in-process replay agree within this (fp32 class; one request
#: of one client is computed alone or packed with others, which may round differently)
LOSS_RTOL = 1e-5
LOSS_ATOL = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Plan:
    """What every client does: ``steps`` training steps (forward_backward + optim_step), a named
    ``save_state`` after every ``save_every``-th step, a sampler snapshot + seeded sample before
    every ``sample_every``-th step, and a ``final`` save_state at the end."""

    clients: int = 16
    steps: int = 12
    save_every: int = 3
    sample_every: int = 4
    rank: int = 4

    def saves_after(self, step: int) -> bool:
        return step % self.save_every == self.save_every - 1

    def samples_at(self, step: int) -> bool:
        return step % self.sample_every == 0


def batch(client: int, step: int) -> list[list[int]]:
    """The token sequences client ``client`` trains on at ``step`` (deterministic)."""
    rng = np.random.default_rng(7919 * client + step)
    return [rng.integers(1, 200, size=int(rng.integers(4, 10))).tolist() for _ in range(2)]


def local_datum(tokens: list[int]) -> ts.Datum:
    inputs: dict[str, Any] = {"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)}
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


@dataclass
class Reference:
    """The uninterrupted run of one client in process: loss of every step (before its optimizer
    step, i.e. the loss of the weights after ``step`` steps) and the tokens of every sample."""

    losses: list[float] = field(default_factory=list)
    tokens: dict[int, list[int]] = field(default_factory=dict)


def replay(backend: str, base: str, plan: Plan, root: Path) -> list[Reference]:
    """Every client's plan, uninterrupted, on ``backend`` in this process."""
    out: list[Reference] = []
    with ts.ServiceClient(backend=backend, checkpoint_dir=str(root)) as service:
        for client in range(plan.clients):
            ref = Reference()
            tc = service.create_lora_training_client(base, rank=plan.rank, seed=client).result()
            for step in range(plan.steps):
                if plan.samples_at(step):
                    sampler = tc.save_weights_and_get_sampling_client().result()
                    params = ts.SamplingParams(max_tokens=4, seed=step)
                    seq = sampler.sample(ts.ModelInput.from_ints(PROMPT), 1, params).result().sequences[0]
                    ref.tokens[step] = list(seq.tokens)
                data = [local_datum(t) for t in batch(client, step)]
                ref.losses.append(float(tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]))
                tc.optim_step(ts.AdamParams(learning_rate=LEARNING_RATE)).result()
            out.append(ref)
    return out


class ServerProcess:
    """``tinker-std serve`` as a child process on a fixed port and checkpoint folder, so that a
    restart after SIGKILL serves the same URL and the same checkpoints."""

    def __init__(self, backend: str, checkpoint_dir: Path, port: int | None = None) -> None:
        self.backend = backend
        self.checkpoint_dir = checkpoint_dir
        checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = checkpoint_dir.parent / f"{checkpoint_dir.name}.server.log"
        self.starts: list[float] = []  # seconds from spawn to "serving", per start

    def start(self, timeout: float = 300.0) -> None:
        command = [sys.executable, "-m", "tinker_std.cli", "serve", "--backend", self.backend]
        command += ["--port", str(self.port), "--api-key", KEY, "--checkpoint-dir", str(self.checkpoint_dir)]
        env = {**os.environ, "TINKER_TELEMETRY": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        began = time.monotonic()
        with self.log.open("a") as log:
            log.write(f"--- start {len(self.starts) + 1}\n")
        for _attempt in range(20):  # the port of a SIGKILLed server can take a moment to free
            log_file = self.log.open("a")
            proc = self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
            log_file.close()
            while time.monotonic() - began < timeout:
                if proc.poll() is not None:
                    break
                if "tinker-std server on" in self.log.read_text().rsplit("--- start", 1)[-1]:
                    self.starts.append(time.monotonic() - began)
                    return
                time.sleep(0.1)
            else:
                raise TimeoutError(f"server did not start in {timeout} s; see {self.log}")
            time.sleep(0.5)
        raise RuntimeError(f"server exited at start (code {proc.returncode}); see {self.log}")

    def kill(self) -> None:
        """SIGKILL the server (its fsdp ranks notice their parent is gone and exit)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def children(self) -> dict[int, int]:
        """The server's child processes that are ranks: {RANK: pid}."""
        assert self.proc is not None
        pid = self.proc.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ranks: dict[int, int] = {}
        for kid in kids:
            try:
                environ = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for entry in environ:
                if entry.startswith(b"RANK="):
                    ranks[int(entry[5:])] = int(kid)
        return ranks


@dataclass
class CheckpointCheck:
    """The check of one acknowledged checkpoint (see ``check_checkpoints``)."""

    path: str
    acknowledged_steps: int
    optimizer_steps: int | None = None  # the server's own counter, read from the files
    loss_after_load: float | None = None
    expected_loss: float | None = None
    error: str | None = None


def check_checkpoints(
    backend: str, root: Path, acknowledged: list[tuple[int, str, int]], refs: list[Reference], plan: Plan
) -> list[CheckpointCheck]:
    """For each acknowledged ``(client, path, steps)``: the files match their recorded digest,
    the optimizer step counter stored by the server equals ``steps`` (no step lost or applied
    twice), and the checkpoint loads (with its optimizer) in a fresh in-process backend whose
    next loss equals the replay's loss after ``steps`` steps."""
    from tinker_std.backends.torch.storage import read_optimizer
    from tinker_std.checkpoints import CheckpointStore
    from tinker_std.server.records import ServerRecords
    from tinker_std.types import ParsedCheckpointTinkerPath

    store = CheckpointStore(root)
    records = ServerRecords(root.parent / f"{root.name}.server.sqlite")  # the server's path -> backend path
    checks: list[CheckpointCheck] = []
    with ts.ServiceClient(backend=backend, checkpoint_dir=str(root)) as service:
        for client, path, steps in acknowledged:
            check = CheckpointCheck(path, steps)
            checks.append(check)
            try:
                served = ParsedCheckpointTinkerPath.from_tinker_path(path)
                record = records.checkpoint(TENANT, served.training_run_id, served.checkpoint_id)
                if record is None:
                    raise LookupError("the server has no record of it")
                parsed = ParsedCheckpointTinkerPath.from_tinker_path(record.backend_path)
                store.read_metadata(parsed, verify=True)  # CorruptCheckpointError when damaged
                state = read_optimizer(store.directory(parsed))
                counters = {int(entry["step"].item()) for entry in (state or {}).values()}
                check.optimizer_steps = counters.pop() if len(counters) == 1 else -1
                tc = service.create_training_client_from_state_with_optimizer(record.backend_path).result()
                if steps < plan.steps:
                    data = [local_datum(t) for t in batch(client, steps)]
                    out = tc.forward(data, "cross_entropy").result()
                    check.loss_after_load = float(out.metrics["loss:sum"])
                    check.expected_loss = refs[client].losses[steps]
                tc.release().result()
            except Exception as exc:  # reported, and the caller fails on it
                check.error = f"{type(exc).__name__}: {exc}"
    records.close()
    return checks
