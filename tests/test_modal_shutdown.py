"""A process on the modal backend ends promptly, whatever its samplers' releases meet at shutdown.

A ``SamplingClient``'s finalizer releases its sampler (SMP-19) from whatever thread collects it,
also while the backend closes and at interpreter exit. A release used to wait with no timeout on
the container's event loop: when it reached a container whose loop had already stopped (the
backend's close, a container restart), it waited forever, and ``concurrent.futures``' exit hook,
which joins every pool thread, hung the interpreter after every test had passed. The checks run
in a child process with a timeout, so the old behaviour fails them instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("modal")

_CHILD = textwrap.dedent(
    """
    import asyncio, gc, sys
    import tinker_std as ts
    from tinker_std.backends.modal import ModalBackend
    from tinker_std.backends.modal.service import ContainerService, ContainerStoppedError

    root = sys.argv[1]

    # 1. A call that reaches a stopped container fails at once instead of waiting on its loop.
    service = ContainerService(base_model="", checkpoint_dir=root + "/service", engine_options={"device": "cpu"})
    service.close()
    envelope = service.call("release_sampler", {"sampler_id": "sampler-x"})
    print("stopped-call", envelope["error"]["type"], flush=True)

    # 2. Samplers dropped after their backend closed: the releases fail fast, no new container starts.
    closed = ts.ServiceClient(backend="modal", offline=True, checkpoint_dir=root + "/closed")
    dropped = [closed.create_sampling_client(base_model="tiny-llama").result() for _ in range(4)]
    backend = closed.backend
    assert isinstance(backend, ModalBackend)
    backend.factory.close()
    try:
        asyncio.run(backend.release_sampler(dropped[0].spec.sampler_id))
    except ContainerStoppedError as exc:
        print("release-after-close", type(exc).__name__, flush=True)
    del dropped
    gc.collect()
    handle = next(iter(backend.factory.handles.values()), None) if hasattr(backend.factory, "handles") else None
    print("restarted", handle is not None and handle._instance is not None, flush=True)

    # 3. Live samplers of an open client, released by their finalizers while the interpreter exits.
    live = ts.ServiceClient(backend="modal", offline=True, checkpoint_dir=root + "/live")
    KEPT = [live.create_sampling_client(base_model="tiny-llama").result() for _ in range(8)]
    print("exiting", len(KEPT), flush=True)
    """
)


def test_a_modal_process_exits_promptly_with_samplers_released_at_shutdown(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TINKER_STD_CACHE_DIR": str(tmp_path / "cache"),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the modal process did not exit within 240 s; its output: {exc.stdout!r} {exc.stderr!r}")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "stopped-call ContainerStoppedError" in lines  # answered; it used to wait forever
    assert "release-after-close ContainerStoppedError" in lines
    assert "restarted False" in lines  # a late release does not start a new container
    assert "exiting 8" in lines
