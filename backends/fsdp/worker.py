"""One rank of the FSDP backend: ``python -m tinker_std.backends.fsdp.worker --connect HOST:PORT``
(also ``tinker-std fsdp-worker``).

The rank reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and ``LOCAL_RANK`` for
its GPU) from the environment, as ``torchrun`` sets them, and the connection key (hex) from
``TINKER_STD_FSDP_AUTHKEY``. It connects to the coordinator (the ``FsdpBackend`` in the user's
process) at ``HOST:PORT`` (retrying for ``TINKER_STD_FSDP_CONNECT_TIMEOUT`` seconds, default 300,
while nobody listens yet), says hello, receives the engine options, joins the process group
(gloo on CPU, NCCL on CUDA), builds a ``TorchEngine`` with an ``FsdpPlacement`` and reports ready
(or the error that stopped it). Then it executes engine calls as they arrive, in order, and
answers each with its result or its error; every rank receives the same calls in the same order.

Shutdown: a ``close`` message, the connection closing (the coordinator exited) or, for ranks the
backend launched itself, the parent's death (``PR_SET_PDEATHSIG`` on Linux) end the process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

__all__ = ["main", "serve"]

AUTHKEY_ENV = "TINKER_STD_FSDP_AUTHKEY"
PDEATHSIG_ENV = "TINKER_STD_FSDP_PDEATHSIG"
CONNECT_TIMEOUT_ENV = "TINKER_STD_FSDP_CONNECT_TIMEOUT"


def _connect(address: tuple[str, int], key: bytes, timeout: float) -> Connection:
    """Connect to the coordinator, retrying while it is not listening yet (ranks launched by
    ``torchrun`` may start before the ``ServiceClient`` that waits for them)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(address, authkey=key)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans even mid-collective)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:  # the parent already died before prctl took effect
        os._exit(1)


def serve(conn: Connection, rank: int, world_size: int) -> None:
    """The rank's life after the hello: init, ready, then the call loop."""
    from .wire import pack

    engine: Any = None
    placement: Any = None
    try:
        init = conn.recv()
        options: dict[str, Any] = init["options"]
        import torch
        import torch.distributed as dist

        from tinker_std.checkpoints import CheckpointStore

        from ..torch.engine import TorchEngine
        from ..torch.precision import resolve_device
        from .placement import FsdpPlacement

        torch.set_num_threads(int(init.get("threads") or 1))
        device = resolve_device(options.get("device"))
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", rank))
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=float(init["timeout"]))
        )
        placement = FsdpPlacement(device, init["token"])
        engine = TorchEngine(
            CheckpointStore(Path(init["checkpoint_dir"])),
            device=device,
            dtype=options.get("dtype"),
            models=options.get("models"),
            max_context_length=options.get("max_context_length"),
            placement=placement,
        )
        for name in init.get("preload") or []:
            engine.bases.get(name)
    except BaseException as exc:
        conn.send(("failed", pack(exc, rank)))
        raise
    conn.send(("ready", rank))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "close":
            try:
                engine.close()
                placement.close()
            finally:
                try:
                    conn.send(("closed", rank))
                except OSError:  # the coordinator stopped waiting; the rank still exits cleanly
                    pass
            break
        _, seq, method, args, kwargs = message
        try:
            if method == "parameter_bytes":
                result = _parameter_bytes(engine)
            else:
                result = getattr(engine, method)(*args, **kwargs)
        except Exception as exc:
            conn.send(("error", seq, pack(exc, rank)))
        else:
            conn.send(("result", seq, result))


def _parameter_bytes(engine: Any) -> dict[str, dict[str, int]]:
    from .placement import local_parameter_bytes

    return {
        name: {"base": local_parameter_bytes(b.model), "adapters": local_parameter_bytes(b.model, adapters=True)}
        for name, b in engine.bases.loaded.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinker-std fsdp-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="HOST:PORT of the coordinator (the FsdpBackend)")
    args = parser.parse_args(argv)
    if os.environ.get(PDEATHSIG_ENV) == "1":
        _die_with_parent()
    host, _, port = args.connect.rpartition(":")
    key = os.environ.get(AUTHKEY_ENV)
    if not key:
        print(f"fsdp-worker: set {AUTHKEY_ENV} to the coordinator's key (hex)", file=sys.stderr)
        return 2
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    conn = _connect((host, int(port)), bytes.fromhex(key), float(os.environ.get(CONNECT_TIMEOUT_ENV, "300")))
    conn.send(("hello", rank, world_size, os.getpid()))
    serve(conn, rank, world_size)
    # The rank's work is done and its process group destroyed. Skip interpreter finalization:
    # tearing down the communication library's threads there can crash a process whose work
    # succeeded, and torchrun reports any non-zero rank as a failed job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
