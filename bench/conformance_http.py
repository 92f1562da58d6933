"""The conformance suite over HTTP vs in process (issue 23: within 2x), three ways, interleaved.

- ``in process``: ``python -m tinker_std.conformance --backend mock``;
- ``HTTP, server in the suite's process``: ``--backend tinker_std.backends.tinker:TinkerMockBackend``
  (the official SDK over loopback HTTP to a ``TinkerServer`` that the backend starts in the same
  process; what CI certifies as ``tinker-mock``);
- ``HTTP, server process``: ``tinker-std serve --backend mock`` started as its own process (as a
  provider runs it), with a fresh checkpoint folder and run records each round, and the suite on
  ``--backend tinker`` with a ``--backend-config`` naming its URL and key and declaring what
  ``TinkerMockBackend`` declares. The two statements that inspect checkpoint files on disk
  (CKPT-14, CKPT-15) are not applicable there (the files are the server's), so that run does a
  little less work than the other two.

Each run is a child process; its wall time is measured here (for the server process: the
suite's run only, not the server's boot), and a run that does not pass (exit status not 0) stops
the benchmark. Prints each run's seconds, the medians and minima, and
the ratios to in process. ``--rounds`` (default 3) rounds after ``--warmup`` (default 0).

    python bench/conformance_http.py [--rounds 3 --warmup 0]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import common as c

from tinker_std.backends.tinker import TinkerMockBackend

KEY = "tml-bench-conformance"
SUITE = [sys.executable, "-m", "tinker_std.conformance"]
QUIET = ["--", "-q", "-p", "no:cacheprovider"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TINKER_TELEMETRY="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TINKER_STD_MODAL_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _suite(*args: str) -> None:
    result = subprocess.run([*SUITE, *args, *QUIET], env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise SystemExit(f"conformance run {' '.join(args)} failed ({result.returncode}):\n{tail}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def _server_process(folder: Path) -> Iterator[str]:
    """``tinker-std serve --backend mock`` on a free port with its checkpoints (and run records)
    under ``folder``; yields its URL once it answers ``healthz``."""
    port = _free_port()
    command = [sys.executable, "-m", "tinker_std.cli", "serve", "--backend", "mock", "--port", str(port)]
    command += ["--api-key", KEY, "--checkpoint-dir", str(folder / "checkpoints")]
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    probe = urllib.request.Request(f"{url}/api/v1/healthz", headers={"X-API-Key": KEY})
                    urllib.request.urlopen(probe, timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"tinker-std serve did not come up on {url}") from None
                    time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def _remote_round(folder: Path) -> float:
    """A fresh ``tinker-std serve`` (started and stopped outside the timing: its boot is the
    provider's, not the suite's), and the suite's wall time against it."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch, _server_process(Path(scratch)) as url:
        declared = TinkerMockBackend.capabilities
        config = Path(scratch) / "peer.json"
        options = {"base_url": url, "api_key": KEY, "tolerance": declared.tolerance}
        config.write_text(json.dumps({**options, "capabilities": sorted(declared.optional)}), encoding="utf-8")
        return c.seconds(lambda: _suite("--backend", "tinker", "--backend-config", str(config)))


def main() -> None:
    args = c.parse_args(__doc__ or "", rounds=3, warmup=0)  # also prints the machine
    local: dict[str, Callable[[], None]] = {
        "in process": lambda: _suite("--backend", "mock"),
        "HTTP, server in the suite's process": lambda: _suite(
            "--backend", "tinker_std.backends.tinker:TinkerMockBackend"
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in [*local, "HTTP, server process"]}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.warmup + args.rounds):
            measured = {name: c.seconds(run) for name, run in local.items()}
            measured["HTTP, server process"] = _remote_round(Path(folder))
            if round_ >= args.warmup:
                for name, took in measured.items():
                    times[name].append(took)
    base = times["in process"]
    for name, runs in times.items():
        runs_text = " / ".join(f"{s:.1f}" for s in runs)
        print(f"{name:>36}: {runs_text} s | {c.summary(runs)}")
        if runs is not base:
            print(f"{'':>36}  ratio to in process: {c.ratio(runs, base)}; target <= 2")
    print(f"# load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
