"""The server as a process (issue 13, items 4 and 5): graceful SIGTERM, kill -9 + restart on the
same directory keeps the REST listings and resumes with the same next-step loss, idle sessions
are reaped and their models released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sdk_sessions import end_sessions
from server_support import KEY, Wire, fb_body, proto_headers, sdk_datum, served

tinker = pytest.importorskip("tinker")

BATCH = [[1, 5, 9, 14, 3, 7], [4, 4, 8, 2, 11]]


@contextmanager
def server_process(checkpoint_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``tinker-std serve --backend mock --port 0`` as a child process; (process, url)."""
    command = [sys.executable, "-m", "tinker_std.cli", "serve", "--backend", "mock", "--port", "0"]
    command += ["--api-key", KEY, "--checkpoint-dir", str(checkpoint_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("tinker-std server on http://"), line
        url = line.split()[3]
        yield proc, url
    finally:
        if url is not None:
            end_sessions(url, server_alive=proc.poll() is None)  # no heartbeat to a stopped server
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def loss(tc: Any) -> float:
    out = tc.forward_backward([sdk_datum(tinker, t) for t in BATCH], "cross_entropy").result()
    return float(out.metrics["loss:sum"])


def test_sigterm_fails_pending_futures_and_the_process_exits(tmp_path: Path) -> None:
    with server_process(tmp_path / "ckpt") as (proc, url):
        wire = Wire(url)
        model_id = wire.create_model(wire.session(), _base(wire))
        # seq_id 2 without 1: its future stays pending (the lane waits for 1)
        pending = wire.http.post("forward_backward", content=fb_body(model_id, 2, BATCH[0]), headers=proto_headers())
        answer: dict[str, Any] = {}

        def poll() -> None:
            answer["reply"] = wire.result(pending.json()["request_id"])

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        poller.join(timeout=15)
        assert not poller.is_alive()
        assert "ServerShutdown" in answer["reply"].json()["error"]
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 20
        assert proc.stdout is not None and "tinker-std server stopped" in proc.stdout.read()


def _base(wire: Wire) -> str:
    caps = wire.http.get("get_server_capabilities").json()
    return str(caps["supported_models"][0]["model_name"])


def test_kill_9_then_restart_keeps_listings_and_resumes_with_the_same_loss(tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    with server_process(checkpoints) as (proc, url):
        sdk = tinker.ServiceClient(base_url=url, api_key=KEY)
        base = sdk.get_server_capabilities().supported_models[0].model_name
        tc = sdk.create_lora_training_client(base_model=base, rank=4, seed=7).result()
        for _ in range(2):
            loss(tc)
            tc.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
        path = tc.save_state("resume-here").result().path
        next_loss = loss(tc)  # the step after the checkpoint, before any optimizer step
        tc.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
        after_step = loss(tc)
        run_id = tc.model_id
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert (tmp_path / "ckpt.server.sqlite").is_file()

    with server_process(checkpoints) as (_, url):
        sdk = tinker.ServiceClient(base_url=url, api_key=KEY)
        rest = sdk.create_rest_client()
        assert [r.training_run_id for r in rest.list_training_runs().result().training_runs] == [run_id]
        assert [c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints] == [path]
        resumed = sdk.create_training_client_from_state_with_optimizer(path).result()
        assert loss(resumed) == next_loss
        resumed.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
        assert loss(resumed) == after_step


def test_idle_sessions_are_reaped_and_their_models_released(tmp_path: Path) -> None:
    with served("mock", tmp_path, idle_session_s=2.0, reap_every_s=0.2) as (server, service, base):
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)  # heartbeats every 10 s
        tc = sdk.create_lora_training_client(base_model=base, rank=4).result()
        backend_models = service.backend._models
        assert len(backend_models) == 1
        deadline = time.monotonic() + 10
        while backend_models and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backend_models == {}  # released on the backend
        with pytest.raises(Exception, match="NotFoundError"):
            tc.forward([sdk_datum(tinker, BATCH[0])], "cross_entropy").result()
