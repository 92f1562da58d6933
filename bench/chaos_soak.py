"""Chaos and soak run of the tinker-std server with the official SDK (issue 21 item 7).

Soak: ``tinker-std serve`` (torch backend, the built-in ``tiny-llama``) as a child process and
``--clients`` threads, each an official ``tinker`` SDK client over real HTTP with its own LoRA
model, running a fixed plan of training steps (forward_backward + optim_step), sampler snapshots
with seeded samples and named ``save_state`` checkpoints. Meanwhile the server is SIGKILLed and
restarted (same port, same checkpoint folder) ``--kills`` times, at evenly spaced points of the
run's progress. A client whose call fails resumes from its last acknowledged checkpoint (a fresh
model from its seed when it has none) on the restarted server.

Rank kill: ``tinker-std serve --backend fsdp`` (2 ranks); one rank is SIGKILLed with three
calls pending; they must fail with a typed error naming the rank, fast; the server is restarted
(a fresh group) and the client resumes from its checkpoint with the same losses as before.

Checked afterwards (``Outcome.problems`` lists every violation; the exit status is 1 if any):
every acknowledged checkpoint matches its digest, its optimizer step counter (the server's own
count, read from the files) equals the steps the client saw acknowledged before saving it, and
it loads in a fresh in-process backend with the replay's next loss; every loss and sampled token
any client saw acknowledged equals the uninterrupted in-process replay (losses within
``LOSS_RTOL``/``LOSS_ATOL``, tokens exactly); every client completed; every failed call failed with
a typed SDK error (``tinker.*``) and none went unanswered past ``--bound-s``.

    .venv/bin/python bench/chaos_soak.py --clients 16 --steps 12 --kills 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_parts import (  # bench scripts run as files: their folder is on sys.path
    KEY,
    LEARNING_RATE,
    LOSS_ATOL,
    LOSS_RTOL,
    PROMPT,
    Plan,
    ServerProcess,
    batch,
    check_checkpoints,
    replay,
)

os.environ.setdefault("TINKER_TELEMETRY", "0")
warnings.filterwarnings("ignore", category=FutureWarning)  # the SDK's deprecation of get_server_capabilities


class Interrupted(Exception):
    """A call of this client failed or went unanswered; it resumes from its last checkpoint."""


@dataclass
class ClientRun:
    """What one client saw acknowledged, and how its calls failed."""

    client: int
    losses: dict[int, list[float]] = field(default_factory=dict)  # step -> every acknowledged loss
    tokens: dict[int, list[list[int]]] = field(default_factory=dict)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)  # (path, steps acknowledged before it)
    typed_errors: Counter[str] = field(default_factory=Counter)
    untyped_errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # calls unanswered past the bound
    requests: int = 0
    resumes: int = 0
    completed: bool = False


def _typed(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "tinker"


def _resolved(value: Any, bound: float) -> Any:
    return value.result(timeout=bound) if hasattr(value, "result") else value


class SoakClient:
    """One SDK client running ``plan`` against ``url`` until done, resuming after failures."""

    def __init__(self, url: str, base: str, client: int, plan: Plan, bound: float) -> None:
        self.url, self.base, self.plan, self.bound = url, base, plan, bound
        self.run = ClientRun(client)

    def acknowledged_steps(self) -> int:
        return sum(len(seen) for seen in list(self.run.losses.values()))

    def call(self, kind: str, fn: Any) -> Any:
        import concurrent.futures

        self.run.requests += 1
        try:
            return fn()
        except concurrent.futures.TimeoutError:
            self.run.lost.append(kind)
            raise Interrupted(kind) from None
        except Exception as exc:
            if _typed(exc):
                self.run.typed_errors[type(exc).__name__] += 1
            else:
                self.run.untyped_errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
            raise Interrupted(kind) from exc

    def connect(self, deadline: float) -> Any:
        import tinker

        while True:
            try:
                return tinker.ServiceClient(base_url=self.url, api_key=KEY)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def training_client(self) -> tuple[Any, int]:
        """A training client at the last acknowledged checkpoint: (client, steps done)."""
        sdk = self.connect(time.monotonic() + 600)
        if not self.run.checkpoints:
            made = sdk.create_lora_training_client(base_model=self.base, rank=self.plan.rank, seed=self.run.client)
            return self.call("create_model", lambda: _resolved(made, self.bound)), 0
        path, steps = self.run.checkpoints[-1]
        loaded = sdk.create_training_client_from_state_with_optimizer(path)
        return self.call("load_state", lambda: _resolved(loaded, self.bound)), steps

    def step(self, tc: Any, step: int) -> None:
        """Step ``step`` of the plan: sample first if due, train, then save if due."""
        import tinker

        run, plan, bound = self.run, self.plan, self.bound
        if plan.samples_at(step):
            snapshot = tc.save_weights_and_get_sampling_client()
            sampler = self.call("save_weights_for_sampler", lambda: _resolved(snapshot, bound))
            params = tinker.SamplingParams(max_tokens=4, seed=step)
            sample = sampler.sample(tinker.ModelInput.from_ints(PROMPT), 1, params)
            out = self.call("sample", lambda: sample.result(timeout=bound))
            run.tokens.setdefault(step, []).append(list(out.sequences[0].tokens))
        data = [_sdk_datum(tinker, t) for t in batch(run.client, step)]
        fb = tc.forward_backward(data, "cross_entropy")
        opt = tc.optim_step(tinker.AdamParams(learning_rate=LEARNING_RATE))
        loss = self.call("forward_backward", lambda: fb.result(timeout=bound)).metrics["loss:sum"]
        self.call("optim_step", lambda: opt.result(timeout=bound))
        run.losses.setdefault(step, []).append(float(loss))
        if plan.saves_after(step) or step + 1 == plan.steps:
            saving = tc.save_state("final" if step + 1 == plan.steps else f"step-{step + 1}")
            saved = self.call("save_state", lambda: saving.result(timeout=bound))
            run.checkpoints.append((saved.path, step + 1))

    def execute(self) -> ClientRun:
        """Run the plan to its end, resuming from the last checkpoint after every failure."""
        while not self.run.completed:
            try:
                tc, done = self.training_client()
                for step in range(done, self.plan.steps):
                    self.step(tc, step)
                self.run.completed = True
            except Interrupted:
                self.run.resumes += 1
                time.sleep(0.2)
        return self.run


def _sdk_datum(tinker: Any, tokens: list[int]) -> Any:
    inputs = {"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)}
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


@dataclass
class Outcome:
    """The figures of a run and every violated expectation (``problems`` empty: all held)."""

    figures: dict[str, Any]
    problems: list[str]


def soak(root: Path, plan: Plan, kills: int = 2, backend: str = "torch", bound: float = 180.0) -> Outcome:
    """The soak run (module doc) with checkpoints and logs under ``root``."""
    import tinker

    started = time.monotonic()
    server = ServerProcess(backend, root / "ckpt")
    server.start()
    problems: list[str] = []
    kill_at: list[int] = []
    try:
        base = tinker.ServiceClient(base_url=server.url, api_key=KEY).get_server_capabilities()
        base_model = base.supported_models[0].model_name
        assert base_model is not None
        clients = [SoakClient(server.url, base_model, c, plan, bound) for c in range(plan.clients)]

        def progress() -> int:
            return sum(c.acknowledged_steps() for c in clients)

        with ThreadPoolExecutor(plan.clients) as pool:
            futures = [pool.submit(c.execute) for c in clients]
            total = plan.clients * plan.steps
            for k in range(kills):  # evenly spaced through the run's progress
                while progress() < total * (k + 1) / (kills + 1) and not all(f.done() for f in futures):
                    time.sleep(0.05)
                if all(f.done() for f in futures):
                    problems.append(f"the run finished before kill {k + 1}")
                    break
                kill_at.append(progress())
                server.kill()
                server.start()
            runs = [f.result() for f in futures]
    finally:
        server.stop()
    served_s = time.monotonic() - started
    refs = replay(backend, base_model, plan, root / "replay")
    acknowledged = [(r.client, path, steps) for r in runs for path, steps in r.checkpoints]
    checks = check_checkpoints(backend, root / "ckpt", acknowledged, refs, plan)

    worst = 0.0
    for r in runs:
        if not r.completed:
            problems.append(f"client {r.client} did not complete")
        problems += [f"client {r.client} untyped error {e}" for e in r.untyped_errors]
        problems += [f"client {r.client} {kind} unanswered within {bound} s" for kind in r.lost]
        for step, seen in sorted(r.losses.items()):
            want = refs[r.client].losses[step]
            for got in seen:
                worst = max(worst, abs(got - want))
                if abs(got - want) > LOSS_ATOL + LOSS_RTOL * abs(want):
                    problems.append(f"client {r.client} step {step}: loss {got!r}, replay {want!r}")
        for step, sampled in sorted(r.tokens.items()):
            problems += [
                f"client {r.client} sample at {step}: {t}, replay {refs[r.client].tokens[step]}"
                for t in sampled
                if t != refs[r.client].tokens[step]
            ]
        if set(r.losses) != set(range(plan.steps)):
            problems.append(f"client {r.client} acknowledged steps {sorted(r.losses)}")
    for check in checks:
        if check.error is not None:
            problems.append(f"checkpoint {check.path}: {check.error}")
        elif check.optimizer_steps != check.acknowledged_steps:
            acked = check.acknowledged_steps
            problems.append(f"checkpoint {check.path}: optimizer step {check.optimizer_steps}, client saw {acked}")
        elif check.expected_loss is not None and check.loss_after_load is not None:
            if abs(check.loss_after_load - check.expected_loss) > LOSS_ATOL + LOSS_RTOL * abs(check.expected_loss):
                problems.append(f"checkpoint {check.path}: loss {check.loss_after_load}, replay {check.expected_loss}")
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r.typed_errors)
    figures = {
        "backend": backend,
        "clients": plan.clients,
        "steps_per_client": plan.steps,
        "requests": sum(r.requests for r in runs),
        "server_kills_survived": len(kill_at),
        "killed_at_steps": kill_at,
        "server_starts_s": [round(s, 1) for s in server.starts],
        "resumes": sum(r.resumes for r in runs),
        "typed_errors": dict(errors),
        "untyped_errors": sum(len(r.untyped_errors) for r in runs),
        "requests_lost": sum(len(r.lost) for r in runs),
        "checkpoints_verified": sum(c.error is None for c in checks),
        "checkpoints_acknowledged": len(checks),
        "max_loss_abs_diff_vs_replay": worst,
        "served_wall_s": round(served_s, 1),
        "total_wall_s": round(time.monotonic() - started, 1),
    }
    return Outcome(figures, problems)


def rank_kill(root: Path, bound: float = 120.0) -> Outcome:
    """The fsdp rank kill (module doc) with checkpoints and logs under ``root``."""
    import tinker

    started = time.monotonic()
    problems: list[str] = []
    server = ServerProcess("fsdp", root / "ckpt")
    server.start()
    adam = tinker.AdamParams(learning_rate=LEARNING_RATE)
    fail_s = 0.0
    errors: list[str] = []
    try:
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        base = sdk.get_server_capabilities().supported_models[0].model_name
        assert base is not None
        tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=3).result(timeout=bound)

        def step(tc: Any, at: int) -> float:
            data = [_sdk_datum(tinker, t) for t in batch(0, at)]
            loss = tc.forward_backward(data, "cross_entropy").result(timeout=bound).metrics["loss:sum"]
            tc.optim_step(adam).result(timeout=bound)
            return float(loss)

        for at in range(2):
            step(tc, at)
        path = tc.save_state("before-rank-kill").result(timeout=bound).path
        uninterrupted = [step(tc, at) for at in (2, 3)]
        ranks = server.children()
        if sorted(ranks) != [0, 1]:
            problems.append(f"expected ranks 0 and 1 under the server, found {ranks}")
        data = [_sdk_datum(tinker, t) for t in batch(0, 4)]
        pending: list[Any] = [tc.forward_backward(data, "cross_entropy"), tc.optim_step(adam)]
        pending.append(tc.forward_backward(data, "cross_entropy"))
        killed = time.monotonic()
        os.kill(ranks[1], 9)
        for fut in pending:
            try:
                fut.result(timeout=bound)
                problems.append("a call pending at the rank kill succeeded")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                if not _typed(exc) or "rank 1" not in str(exc):
                    problems.append(f"pending call failed without a typed error naming rank 1: {errors[-1]}")
        fail_s = time.monotonic() - killed
        server.kill()  # a broken group stays broken (RankFailedError); a restart starts a fresh one
        server.start()
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        resumed = sdk.create_training_client_from_state_with_optimizer(path).result(timeout=bound)
        after = [step(resumed, at) for at in (2, 3)]
        if after != uninterrupted:
            problems.append(f"resumed losses {after} differ from the uninterrupted {uninterrupted}")
    finally:
        server.stop()
    figures = {
        "backend": "fsdp (world_size 2)",
        "pending_calls_failed": len(errors),
        "pending_failed_within_s": round(fail_s, 2),
        "error_example": errors[0] if errors else None,
        "resumed_identical": not any("resumed" in p for p in problems),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return Outcome(figures, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--bound-s", type=float, default=180.0, help="a call unanswered this long counts as lost")
    parser.add_argument("--skip-rank-kill", action="store_true")
    args = parser.parse_args()
    plan = Plan(clients=args.clients, steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="tinker-std-chaos-") as tmp:
        outcomes = {"soak": soak(Path(tmp) / "soak", plan, args.kills, bound=args.bound_s)}
        if not args.skip_rank_kill:
            outcomes["rank_kill"] = rank_kill(Path(tmp) / "rank")
    print(json.dumps({name: {**o.figures, "problems": o.problems} for name, o in outcomes.items()}, indent=1))
    return 1 if any(o.problems for o in outcomes.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
