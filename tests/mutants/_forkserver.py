"""A fork server for suite runs: one process imports torch, Hypothesis, pytest and the suite once,
then forks a child per run, which runs ``pytest.main`` in a fresh copy of that process.

About 2 of the 3.5 CPU seconds of a small mutant run are imports; forking skips them. Each child
is still a process of its own (a client-layer mutant's replacement stays in it), with its own
working directory, environment additions and output file. The server has a single thread when it
forks (nothing it imports starts one), which is what makes ``fork`` safe here.

Protocol (one JSON object per line): the client writes ``{"id", "args", "cwd", "env", "log"}``;
the server answers ``{"id", "pid"}`` when the child starts and ``{"id", "rc"}`` when it ends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

__all__ = ["ForkServer", "serve"]

_PRELOAD = ("torch", "hypothesis", "pytest", "tinker_std", "tinker_std.conformance.plugin", "tinker_std.backends.mock")


def _child(job: dict[str, Any]) -> None:
    """In the forked child: run pytest as ``job`` says, then exit with its status."""
    rc = 70
    try:
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        out = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        import pytest

        rc = int(pytest.main(list(job["args"])))
    except BaseException:  # the child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def serve() -> None:
    """The server's main loop (``python -c 'from mutants._forkserver import serve; serve()'``)."""
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    import mutants._runner  # noqa: F401  (registers the Hypothesis profile)

    _send({"ready": True})
    children: dict[int, str] = {}
    pending = b""
    open_input = True
    while open_input or children:
        if open_input and select.select([0], [], [], 0.05)[0]:
            chunk = os.read(0, 1 << 16)
            open_input = bool(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(job)
                children[pid] = job["id"]
                _send({"id": job["id"], "pid": pid})
        elif not open_input:
            select.select([], [], [], 0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _send({"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


class ForkServer:
    """The client side: start the server, run jobs on it (thread-safe), close it."""

    def __init__(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-c", "from mutants._forkserver import serve; serve()"]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        first = self._stdout.readline()
        if not first or not json.loads(first).get("ready"):
            raise RuntimeError("the fork server did not start")
        self._lock = threading.Lock()
        self._next = 0
        self._pids: dict[str, int] = {}
        self._done: dict[str, Future[int]] = {}
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stdout:
            message = json.loads(line)
            with self._lock:
                if "pid" in message:
                    self._pids[message["id"]] = message["pid"]
                elif "rc" in message:
                    self._done.pop(message["id"]).set_result(int(message["rc"]))
        with self._lock:  # the server died: fail whatever is still waiting
            for future in self._done.values():
                future.set_exception(RuntimeError("the fork server exited"))
            self._done.clear()

    def run(self, args: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> int:
        """Run ``pytest args`` in a forked child; its exit status (output in ``log``)."""
        future: Future[int] = Future()
        with self._lock:
            job_id = str(self._next)
            self._next += 1
            self._done[job_id] = future
            job = {"id": job_id, "args": args, "cwd": str(cwd), "env": env, "log": str(log)}
            self._stdin.write((json.dumps(job) + "\n").encode())
            self._stdin.flush()
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            pid = self._pids.get(job_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            raise

    def close(self) -> None:
        self._stdin.close()
        self._proc.wait(timeout=60)
