"""``RankGroup``: the coordinator side of the FSDP backend, in the user's process.

It listens on a TCP address (a random key authenticates the ranks), then either starts the
``world_size`` rank processes itself (``python -m tinker_std.backends.fsdp.worker`` with the
``torchrun`` environment variables set) or waits for ranks launched elsewhere (``attach``: e.g.
``torchrun`` on one or more nodes running ``tinker-std fsdp-worker --connect HOST:PORT``).

``call(method, *args)`` sends the same engine call to every rank, in the order calls are made
(callers serialise them), waits for all answers, and returns rank 0's result or raises the error a
rank raised (rebuilt as its own class). A rank that dies (its connection closes) breaks the
group: the call in flight and every later call raise ``RankFailedError`` naming the rank, and the
other ranks are stopped. Ranks the group started die with it: ``close``, a ``weakref`` finalizer
and ``atexit`` stop them, and each asks the kernel to kill it when the parent dies.
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any

from tinker_std.errors import RequestFailedError

from .wire import ErrorRecord, rebuild
from .worker import AUTHKEY_ENV, PDEATHSIG_ENV

__all__ = ["RankFailedError", "RankGroup", "WorkerStartError"]


class RankFailedError(RequestFailedError):
    """A rank process of the FSDP backend died or stopped answering; the group is unusable."""

    def __init__(self, message: str, *, rank: int) -> None:
        super().__init__(message, category="server")
        self.rank = rank


class WorkerStartError(RuntimeError):
    """The rank processes could not be started (raised by ``FsdpBackend``'s constructor)."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop(processes: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RankGroup:
    """``world_size`` rank processes executing the same engine calls (see module doc).

    ``init`` is what every rank receives before it builds its engine (engine options, checkpoint
    folder, timeouts). ``attach``: ``"HOST:PORT"`` to listen on and wait for externally launched
    ranks instead of starting them (their key is ``authkey``, hex; required then).
    ``start_timeout``: seconds for every rank to connect and report ready.
    """

    def __init__(
        self,
        world_size: int,
        init: dict[str, Any],
        *,
        attach: str | None = None,
        authkey: str | None = None,
        start_timeout: float = 300.0,
        master_port: int | None = None,
    ) -> None:
        if world_size < 1:
            raise ValueError("world_size must be >= 1")
        self.world_size = world_size
        self._lock = threading.Lock()
        self._seq = 0
        self._broken: RankFailedError | None = None
        self._closed = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self.conns: dict[int, Connection] = {}
        self.pids: dict[int, int] = {}
        key = authkey if authkey is not None else secrets.token_hex(16)
        if attach is not None:
            host, _, port = attach.rpartition(":")
            address = (host or "0.0.0.0", int(port))
        else:
            address = ("127.0.0.1", 0)
        self._listener = Listener(address, authkey=bytes.fromhex(key))
        self.address = self._listener.address
        self._finalizer = weakref.finalize(self, _stop, self.processes)
        atexit.register(self._finalizer)
        try:
            if attach is None:
                self._launch(key, master_port)
            self._handshake(init, start_timeout)
        except BaseException:
            self._shutdown_now()
            raise

    # -- start -------------------------------------------------------------------------------

    def _launch(self, key: str, master_port: int | None) -> None:
        port = master_port if master_port is not None else _free_port("127.0.0.1")
        host, listen_port = self.address
        log_dir = Path(tempfile.mkdtemp(prefix="tinker-std-fsdp-"))
        for rank in range(self.world_size):
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.world_size),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                AUTHKEY_ENV: key,
                PDEATHSIG_ENV: "1",
            }
            log = log_dir / f"rank{rank}.log"
            self._logs.append(log)
            with log.open("wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tinker_std.backends.fsdp.worker", "--connect", f"{host}:{listen_port}"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def _log_tail(self, rank: int, lines: int = 15) -> str:
        if rank >= len(self._logs) or not self._logs[rank].exists():
            return ""
        text = self._logs[rank].read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def _exited(self) -> list[tuple[int, int]]:
        return [(rank, code) for rank, proc in enumerate(self.processes) if (code := proc.poll()) is not None]

    def _handshake(self, init: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        accepted: list[Connection] = []
        accept_error: list[BaseException] = []

        def accept() -> None:
            try:
                while len(accepted) < self.world_size:
                    accepted.append(self._listener.accept())
            except BaseException as exc:  # the listener was closed: start failed
                accept_error.append(exc)

        thread = threading.Thread(target=accept, name="tinker-std-fsdp-accept", daemon=True)
        thread.start()
        while len(accepted) < self.world_size:
            self._check_start(deadline, "connect")
            if accept_error:
                raise WorkerStartError(f"fsdp ranks could not connect: {accept_error[0]}")
            time.sleep(0.05)
        for conn in accepted:
            _, rank, world, pid = conn.recv()
            if world != self.world_size or rank in self.conns or not 0 <= rank < self.world_size:
                raise WorkerStartError(
                    f"a rank connected with RANK={rank} WORLD_SIZE={world}; expected ranks 0..{self.world_size - 1}"
                    f" of a world of {self.world_size}"
                )
            self.conns[rank] = conn
            self.pids[rank] = pid
        for conn in self.conns.values():
            conn.send(init)
        pending = dict(self.conns)
        while pending:
            for ready in wait(list(pending.values()), timeout=0.2):
                rank = next(r for r, c in pending.items() if c is ready)
                try:
                    message = pending[rank].recv()
                except (EOFError, OSError):
                    raise WorkerStartError(self._start_failure(rank, None)) from None
                if message[0] == "failed":
                    raise WorkerStartError(self._start_failure(rank, message[1]))
                del pending[rank]
            self._check_start(deadline, "start")

    def _check_start(self, deadline: float, what: str) -> None:
        for rank, code in self._exited():
            raise WorkerStartError(self._start_failure(rank, None, code))
        if time.monotonic() > deadline:
            raise WorkerStartError(f"fsdp ranks did not {what} within the start timeout")

    def _start_failure(self, rank: int, record: ErrorRecord | None, code: int | None = None) -> str:
        if record is not None:
            head = f"fsdp rank {rank} failed to start: {record.qualname}: {record.message}"
        else:
            if code is None and rank < len(self.processes):
                try:
                    code = self.processes[rank].wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
            head = f"fsdp rank {rank} exited during start (exit code {code})"
        tail = self._log_tail(rank)
        return f"{head}\n--- rank {rank} log (last lines) ---\n{tail}" if tail else head

    # -- calls -------------------------------------------------------------------------------

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``engine.<method>(*args, **kwargs)`` on every rank; rank 0's result."""
        with self._lock:
            if self._broken is not None:
                raise RankFailedError(str(self._broken), rank=self._broken.rank)
            if self._closed:
                raise RequestFailedError("the fsdp backend is closed", category="server")
            self._seq += 1
            seq = self._seq
            for rank, conn in self.conns.items():
                try:
                    conn.send(("call", seq, method, args, kwargs))
                except OSError:
                    self._break(rank)
            answers: dict[int, tuple[str, Any]] = {}
            pending = dict(self.conns)
            while pending:
                for ready in wait(list(pending.values())):
                    rank = next(r for r, c in pending.items() if c is ready)
                    try:
                        kind, got_seq, payload = pending[rank].recv()
                    except (EOFError, OSError):
                        self._break(rank)
                    assert got_seq == seq, f"rank {rank} answered call {got_seq}, expected {seq}"
                    answers[rank] = (kind, payload)
                    del pending[rank]
        errors = {rank: payload for rank, (kind, payload) in answers.items() if kind == "error"}
        if errors:
            first = min(errors)
            raise rebuild(errors[first])
        return answers[0][1]

    def _break(self, rank: int) -> None:
        """Rank ``rank`` is gone: stop the others and raise (and keep raising) ``RankFailedError``."""
        code = None
        if rank < len(self.processes):
            try:
                code = self.processes[rank].wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
        how = f"exit code {code}" if code is not None else "connection lost"
        if code is not None and code < 0:
            how = f"killed by signal {-code}"
        self._broken = RankFailedError(
            f"fsdp rank {rank} (pid {self.pids.get(rank)}) died ({how}); the rank group is stopped, "
            "create a new ServiceClient and load the last checkpoint",
            rank=rank,
        )
        self._shutdown_now()
        raise self._broken

    # -- stop --------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Ask every rank to exit, then make sure it did."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._broken is None:
                for conn in self.conns.values():
                    try:
                        conn.send(("close",))
                    except OSError:
                        pass
                deadline = time.monotonic() + timeout
                for conn in self.conns.values():
                    try:
                        if conn.poll(max(0.0, deadline - time.monotonic())):
                            conn.recv()
                    except (EOFError, OSError):
                        pass
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        for conn in self.conns.values():
            conn.close()
        try:
            self._listener.close()
        except OSError:
            pass
        _stop(self.processes)
        self._finalizer.detach()
