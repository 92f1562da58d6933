"""The official SDK over loopback HTTP vs the same calls in process (tinker-std ``ServiceClient``).

Both sides use the same backend in this process: the in-process side calls a ``ServiceClient``
directly, the SDK side goes through ``tinker.ServiceClient(base_url=...)`` to a ``TinkerServer``
serving a second ``ServiceClient`` of the same backend. One training step = forward_backward
(summed cross-entropy, batch 4 x 128) + optim_step, LoRA rank 16; sampling = one prompt of 32
tokens, 4 samples x 32 new tokens. Prints step seconds, sampled tokens per second, and the ratios
SDK-over-HTTP / in-process (issue 23: <= 1.3 for a tiny-llama step, <= 1.05 for SmolLM2), and
the CPU time of the whole process per step (all threads), which a shared machine disturbs less.

Then a per-request breakdown of the SDK step (``--breakdown-steps`` more SDK steps), from the
server's own ``/metrics`` (tinker_std/server/metrics.py): HTTP requests per step by endpoint and
the server's time in each (arrival to end of answer; ``retrieve_future`` includes its long poll,
which overlaps the engine), the CPU per step of each kind of thread (SDK event loop, server event
loop, lanes, worker threads, engine), next to the in-process step (the engine's share), the cost of
one trivial request (``get_server_capabilities``) by raw HTTP and through the SDK, and a timeline
of one step. Measurement only.

``--server-process`` serves from a child process instead (as ``tinker-std serve`` does; the
SDK's work then runs beside the engine's rather than sharing its GIL): the breakdown then shows
this process's threads, the server process's CPU per SDK step (the engine's step plus the
server's own work; compare with the in-process step's CPU, which a loaded machine disturbs less
than the wall times), and no timeline.

    python bench/server_overhead.py --model smollm2 [--warmup 1 --steps 4 --breakdown-steps 8] [--server-process]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import common as c
import httpx
import sdk_floor
from prometheus_client.parser import text_string_to_metric_families

import tinker_std as ts
from tinker_std.server import TinkerServer

BATCH, SEQ, RANK, PROMPT, NEW, SAMPLES = 4, 128, 16, 32, 32, 4
KEY = "tml-bench"


def main() -> None:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import tinker

    separate = "--server-process" in sys.argv
    if separate:
        sys.argv.remove("--server-process")
    args = c.parse_args(__doc__ or "", warmup=1, steps=4, breakdown_steps=8)
    local_svc = c.open_service(args.backend)
    assert local_svc is not None
    local = c.training_client(local_svc, args.base_model, RANK)
    vocab = local.spec.vocab_size
    tokens = c.random_tokens(BATCH, SEQ + 1, vocab)
    prompt = tokens.tolist()[0][:PROMPT]
    print(
        f"# backend {args.backend}, model {args.base_model}; step: batch {BATCH} x {SEQ}, rank {RANK}; "
        f"sample: {SAMPLES} x {NEW} new tokens; server in {'a child' if separate else 'this'} process"
    )

    with serving(args, separate) as url:
        sdk = tinker.ServiceClient(base_url=url, api_key=KEY)
        remote = sdk.create_lora_training_client(
            base_model=args.base_model, rank=RANK, seed=0, train_unembed=False
        ).result()
        local_step, sdk_step = sdk_floor.step_pair(local, remote, tokens)
        steps: dict[str, Callable[[], object]] = {"in-process": local_step, "sdk-http": sdk_step}
        times, cpu = interleaved_with_cpu(steps, args.warmup, args.steps)
        for name, t in times.items():
            print(f"step {name:>10}: {c.summary(t)}")
        target = "1.05" if args.model == "smollm2" else "1.3"
        step_ratio = c.ratio(times["sdk-http"], times["in-process"])
        print(f"step ratio sdk-http / in-process: {step_ratio}; target <= {target}")
        print(
            "step CPU time of this process (all threads; medians): "
            + ", ".join(f"{name} {statistics.median(t) * 1e3:.1f} ms" for name, t in cpu.items())
            + f"; ratio {statistics.median(cpu['sdk-http']) / statistics.median(cpu['in-process']):.3f}"
        )
        breakdown(url, sdk, sdk_step, times["in-process"], args.breakdown_steps)

        local_sampler = local.save_weights_and_get_sampling_client().result()
        remote_sampler = remote.save_weights_and_get_sampling_client().result()
        sampling: dict[str, Callable[[], object]] = {
            "in-process": lambda: local_sampler.sample(
                ts.ModelInput.from_ints(prompt), SAMPLES, ts.SamplingParams(max_tokens=NEW, seed=1)
            ).result(),
            "sdk-http": lambda: remote_sampler.sample(
                tinker.ModelInput.from_ints(prompt),
                num_samples=SAMPLES,
                sampling_params=tinker.SamplingParams(max_tokens=NEW, seed=1),
            ).result(),
        }
        stimes = c.interleaved(sampling, args.warmup, args.steps)
        for name, t in stimes.items():
            print(f"sample {name:>10}: {SAMPLES * NEW / (sum(t) / len(t)):.1f} tok/s ({c.summary(t)})")
        print(f"sampling time ratio sdk-http / in-process: {c.ratio(stimes['sdk-http'], stimes['in-process'])}")
    local_svc.close()


@contextlib.contextmanager
def serving(args: Any, separate: bool) -> Iterator[str]:
    """The URL of a server of ``args.backend``: in this process, or in a child (torch backend)."""
    if separate:
        with sdk_floor.server_process(args.threads) as url:
            yield url
        return
    served_svc = c.open_service(args.backend)
    assert served_svc is not None
    try:
        with TinkerServer(served_svc, api_key=KEY) as server:
            yield server.url
    finally:
        served_svc.close()


def interleaved_with_cpu(
    fns: dict[str, Callable[[], object]], warmup: int, steps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``common.interleaved``, also recording the CPU time this process (every thread: SDK, server,
    engine) spent in each call: on a shared machine it varies far less than the wall time, and
    the HTTP path's extra work shows in it even when other load hides it in the wall time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - wall)
    return walls, cpus


def server_time(url: str) -> dict[str, tuple[float, float]]:
    """endpoint -> (requests, seconds) so far, from the server's latency histogram."""
    reply = httpx.get(url + "/metrics", headers={"X-API-Key": KEY}, timeout=30)
    reply.raise_for_status()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name in ("tinker_std_request_duration_seconds_count", "tinker_std_request_duration_seconds_sum"):
                slot = out.setdefault(sample.labels["endpoint"], [0.0, 0.0])
                slot[0 if sample.name.endswith("_count") else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads by role (Linux ``/proc``; empty elsewhere):
    ``sdk loop`` (the SDK's event-loop thread), ``server loop`` (uvicorn), ``server lanes`` (the
    per-model ``seq_id`` workers), ``server worker threads``, ``engine`` (every other thread: the
    backend's executors and event loop, the caller's thread)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "")
        if "_background_thread_func" in name:
            role = "sdk loop"
        elif name == "tinker-std-server":
            role = "server loop"
        elif name.startswith("lane-"):
            role = "server lanes"
        elif name.startswith("AnyIO worker"):
            role = "server worker threads"
        else:
            role = "engine and caller"
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class _Arrivals(logging.Handler):
    """(endpoint, start, end) of each request, from the server's access log (wall clock)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.spans: list[tuple[str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = json.loads(record.getMessage())
        path = str(entry["path"]).removeprefix("/api/v1/")
        self.spans.append((path, record.created - entry["ms"] / 1e3, record.created))


def timeline(sdk_step: Callable[[], None], steps: int) -> None:
    """Per SDK step: time before the first request reaches the server (client encoding, event-loop
    hop, connect), time with a request on the server, time between requests with none on the
    server (client decode, polling, hops), time after the last answer; and one step's sequence."""
    log = logging.getLogger("tinker_std.server.access")
    arrivals, level, propagate = _Arrivals(), log.level, log.propagate
    log.addHandler(arrivals)
    log.setLevel(logging.INFO)
    log.propagate = False
    parts: list[tuple[float, float, float, float, float]] = []
    sequences: list[list[str]] = []
    try:
        for _ in range(steps):
            arrivals.spans.clear()
            t0 = time.time()
            sdk_step()
            t1 = time.time()
            spans = sorted(s for s in arrivals.spans if s[1] >= t0 - 0.001 and s[0] != "metrics")
            if not spans:
                continue
            busy, cursor = 0.0, spans[0][1]
            for _, start, end in spans:  # union of the server's intervals
                start = max(start, cursor)
                if end > start:
                    busy += end - start
                    cursor = end
            before, after = spans[0][1] - t0, t1 - max(e for _, _, e in spans)
            between = (t1 - t0) - before - after - busy
            parts.append((t1 - t0, before, busy, between, after))
            sequences.append(
                [f"{name} +{(a - t0) * 1e3:.1f}..{(b - t0) * 1e3:.1f}" for name, a, b in spans]
                + [f"done +{(t1 - t0) * 1e3:.1f}"]
            )
    finally:
        log.removeHandler(arrivals)
        log.setLevel(level)
        log.propagate = propagate
    if not parts:
        return
    med = [statistics.median(p[i] for p in parts) * 1e3 for i in range(5)]
    print(
        f"  timeline (medians of {len(parts)} steps, ms): wall {med[0]:.1f} = before the first request "
        f"{med[1]:.1f} + a request on the server {med[2]:.1f} + none on the server between requests "
        f"{med[3]:.1f} + after the last answer {med[4]:.1f}"
    )
    middle = sorted(range(len(parts)), key=lambda i: parts[i][0])[len(parts) // 2]
    print("  one step (ms from the call): " + "; ".join(sequences[middle]))


def breakdown(url: str, sdk: Any, sdk_step: Callable[[], None], engine: list[float], steps: int) -> None:
    """Print where an SDK step's time goes (module docstring)."""
    if steps <= 0:
        return
    child = sdk_floor.CHILDREN.get(url)
    before, cpu_before = server_time(url), thread_cpu()
    child_before = sdk_floor.process_cpu(child) if child else 0.0
    walls = [c.seconds(sdk_step) for _ in range(steps)]
    child_after = sdk_floor.process_cpu(child) if child else 0.0
    cpu_after, after = thread_cpu(), server_time(url)
    wall, engine_s = statistics.median(walls), statistics.median(engine)
    print(f"# breakdown over {steps} SDK steps (median wall {wall * 1e3:.1f} ms, in-process {engine_s * 1e3:.1f} ms)")
    for endpoint in sorted(after):
        n = after[endpoint][0] - before.get(endpoint, (0.0, 0.0))[0]
        t = after[endpoint][1] - before.get(endpoint, (0.0, 0.0))[1]
        if n > 0:
            print(
                f"  {endpoint:>18}: {n / steps:.2f} requests/step, server {t / steps * 1e3:7.1f} ms/step "
                f"({t / n * 1e3:.1f} ms/request)"
            )
    if cpu_after:
        roles = {role: (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / steps * 1e3 for role in cpu_after}
        print(
            "  CPU per SDK step by thread (ms, /proc): "
            + ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(roles.items(), key=lambda kv: -kv[1]) if ms >= 0.05)
        )
    if child:  # the server's process spends the engine's step plus its own HTTP work
        server_cpu = (child_after - child_before) / steps * 1e3
        print(f"  CPU per SDK step of the server process (all threads): {server_cpu:.1f} ms")
    raw = httpx.Client(base_url=url + "/api/v1/", headers={"X-API-Key": KEY}, timeout=30)
    healthz = [c.seconds(lambda: raw.get("healthz").raise_for_status()) for _ in range(20)]
    caps_http = [c.seconds(lambda: raw.get("get_server_capabilities").raise_for_status()) for _ in range(20)]
    caps_sdk = [c.seconds(sdk.get_server_capabilities) for _ in range(20)]
    raw.close()
    print(
        f"  trivial requests (medians of 20): healthz by raw httpx {statistics.median(healthz) * 1e3:.1f} ms; "
        f"get_server_capabilities raw {statistics.median(caps_http) * 1e3:.1f} ms, "
        f"SDK {statistics.median(caps_sdk) * 1e3:.1f} ms"
    )
    timeline(sdk_step, steps)
    print(f"  SDK step minus in-process step: {(wall - engine_s) * 1e3:.1f} ms")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  load average {load} on {os.cpu_count()} CPUs at {time.strftime('%H:%M')}")


if __name__ == "__main__":
    main()
