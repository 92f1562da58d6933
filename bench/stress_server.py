"""Stress the tinker-std server with the official SDK under CPU load (issue 21 item 2).

A server process (``tinker-std serve``, loopback only) and ``--clients`` client processes, each
running the save/sample/train loop of an RL trainer through the official ``tinker`` SDK:
``forward_backward`` + ``optim_step`` (pipelined), ``save_weights_and_get_sampling_client`` (the
SDK's ephemeral ``save_weights_for_sampler``, whose resends change ``sampling_session_seq_id``),
``sample``, and every third step a named ``save_state``. ``--burners`` processes spin the CPUs
meanwhile. Everything stops after ``--seconds``.

Prints one JSON summary: calls per kind, the slowest call of each kind, every call slower than
``--stall-s`` (a request the server did not answer in time shows up here) and every error by type.
Exit status 0 when there was no stall and no error.

    .venv/bin/python bench/stress_server.py --backend mock --clients 6 --seconds 90 --burners 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

KEY = "tml-stress-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _burn(until: float) -> None:
    x = 0
    while time.time() < until:
        for i in range(100_000):
            x ^= i * i


def _client(url: str, index: int, seconds: float, burst: int, ready: Any, go: Any, out: Any) -> None:
    os.environ["TINKER_TELEMETRY"] = "0"
    import warnings

    import tinker

    warnings.simplefilter("ignore", FutureWarning)

    def resolved(value: Any) -> Any:
        return value.result() if hasattr(value, "result") else value

    calls: list[tuple[str, float, str | None]] = []

    def timed(kind: str, fn: Any) -> Any:
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            calls.append((kind, time.monotonic() - start, f"{type(exc).__name__}: {str(exc)[:300]}"))
            return None
        calls.append((kind, time.monotonic() - start, None))
        return result

    service = tinker.ServiceClient(base_url=url, api_key=KEY)
    try:
        # the SDK types model_name Optional; a tinker-std server names every model it lists
        base = service.get_server_capabilities().supported_models[0].model_name
        tc = timed(
            "create_model",
            lambda: resolved(service.create_lora_training_client(base_model=base, rank=4, seed=index)),  # type: ignore[arg-type]
        )
        if tc is None:
            ready.put(index)
            return
        ready.put(index)
        go.wait()
        until = time.time() + seconds
        tokens = [(7 * i + 3 * index + 1) % 200 + 1 for i in range(24)]
        # the SDK converts plain lists at runtime but types loss_fn_inputs dict[str, TensorData]
        datum = tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},  # type: ignore[dict-item]
        )
        adam = tinker.AdamParams(learning_rate=1e-3)
        step = 0
        while time.time() < until:
            fb = tc.forward_backward([datum] * 4, "cross_entropy")
            opt = tc.optim_step(adam)
            timed("forward_backward", fb.result)
            timed("optim_step", opt.result)
            sampler = timed(
                "save_weights_and_get_sampling_client", lambda: resolved(tc.save_weights_and_get_sampling_client())
            )
            if sampler is not None:
                params = tinker.SamplingParams(max_tokens=8, temperature=1.0, seed=step)
                prompt = tinker.ModelInput.from_ints(tokens[:6])
                timed(
                    "sample",
                    lambda s=sampler, p=params, q=prompt: s.sample(q, num_samples=4, sampling_params=p).result(),
                )
                if burst:  # an RL batch: many sample requests in flight while the trainer saves again
                    futures = [sampler.sample(prompt, num_samples=4, sampling_params=params) for _ in range(burst)]
                    snap = timed("save_during_burst", lambda: resolved(tc.save_weights_and_get_sampling_client()))
                    timed("sample_burst", lambda fs=futures: [f.result() for f in fs])
                    del snap
            if step % 3 == 0:
                timed("save_state", lambda s=step: tc.save_state(f"step-{s}").result())
            step += 1
    finally:
        out.put(calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="mock")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument("--sample-burst", type=int, default=0, help="sample requests in flight per step")
    parser.add_argument("--checkpoint-dir", default=None)
    args = parser.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ckpt = args.checkpoint_dir or f"/tmp/tinker-std-stress-{os.getpid()}"
    env = {**os.environ, "TINKER_TELEMETRY": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    access = Path(ckpt + ".access.log")
    launcher = (
        "import logging, sys; from tinker_std.cli import main; "
        f"h = logging.FileHandler({str(access)!r}); "
        "lg = logging.getLogger('tinker_std.server.access'); lg.addHandler(h); lg.setLevel(logging.INFO); "
        "sys.exit(main(sys.argv[1:]))"
    )
    serve = ["serve", "--backend", args.backend, "--port", str(port), "--api-key", KEY, "--checkpoint-dir", ckpt]
    server = subprocess.Popen(
        [sys.executable, "-c", launcher, *serve],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "tinker-std server on" not in line:
            print(line + server.stdout.read(), file=sys.stderr)
            return 2
        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        ready: Any = ctx.Queue()
        go = ctx.Event()
        clients = [
            ctx.Process(target=_client, args=(url, i, args.seconds, args.sample_burst, ready, go, out))
            for i in range(args.clients)
        ]
        for p in clients:
            p.start()
        for _ in clients:  # every client has imported the SDK and created its model
            ready.get(timeout=600)
        until = time.time() + args.seconds
        burners = [ctx.Process(target=_burn, args=(until,)) for _ in range(args.burners)]
        for p in burners:
            p.start()
        go.set()
        calls: list[tuple[str, float, str | None]] = []
        deadline = until + 10 * args.stall_s  # a stalled call may still be waiting for its SDK retry
        for _ in clients:
            calls.extend(out.get(timeout=max(1.0, deadline - time.time())))
        for p in burners + clients:
            p.join(timeout=10)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    counts = Counter(kind for kind, _, _ in calls)
    slowest: dict[str, float] = defaultdict(float)
    for kind, seconds, _ in calls:
        slowest[kind] = max(slowest[kind], round(seconds, 2))
    stalls = [(kind, round(s, 1), err) for kind, s, err in calls if s > args.stall_s]
    errors = Counter(err.split(":")[0] for _, _, err in calls if err)
    examples = sorted({err for _, _, err in calls if err})[:5]
    # the server's own view: how long each HTTP request took to answer (its access log)
    answer_ms: dict[str, float] = defaultdict(float)
    slow_answers = 0
    if access.exists():
        for line in access.read_text().splitlines():
            record = json.loads(line)
            path = record["path"].removeprefix("/api/v1/")
            answer_ms[path] = max(answer_ms[path], float(record["ms"]))
            slow_answers += path != "retrieve_future" and float(record["ms"]) > 5000
    summary = {
        "backend": args.backend,
        "clients": args.clients,
        "burners": args.burners,
        "seconds": args.seconds,
        "calls": dict(counts),
        "slowest_s": dict(slowest),
        "stalls": stalls,
        "errors": dict(errors),
        "error_examples": examples,
        "server_slowest_answer_ms": {k: round(v) for k, v in sorted(answer_ms.items())},
        "server_answers_over_5s_excluding_long_polls": slow_answers,
    }
    print(json.dumps(summary, indent=1))
    return 0 if not stalls and not errors and not slow_answers else 1


if __name__ == "__main__":
    raise SystemExit(main())
