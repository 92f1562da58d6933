"""Checkpoints you can trust: damage is detected, names are bounded, a full disk keeps the old one.

Spec CKPT-14 (a damaged checkpoint is refused as corrupt, naming its tinker path), CKPT-15 (a save that
runs out of space fails typed and leaves the previous checkpoint loadable), CKPT-16 (no error reveals a
file-system path), CKPT-17 (checkpoint names are bounded and refused by name); issue 21.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.conformance.helpers import fill_file_system, forward_logprobs, probe_batch, sequence_datum
from tinker_std.conformance.plugin import ConformanceBackend
from tinker_std.conformance.tolerances import assert_replay

Factory = Callable[..., ts.TrainingClient]


def _train(tc: ts.TrainingClient, v: int, steps: int, offset: int = 0) -> None:
    for k in range(steps):
        data = [sequence_datum([(3 * i + 5 * (k + offset) + 1) % v for i in range(8)], [1.0] * 7)]
        tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(ts.AdamParams(learning_rate=1e-2, weight_decay=0.01, grad_clip_norm=1.0)).result()


def _assert_same_lps(got: list[np.ndarray], want: list[np.ndarray], statement: str, what: str) -> None:
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        assert_replay(x, y, "token", statement, what=f"{what}, probe {i}")


@pytest.mark.spec("CKPT-14", "CKPT-16")
def test_a_damaged_checkpoint_is_refused_as_corrupt(
    conformance_backend: ConformanceBackend,
    training_client: Factory,
    service: ts.ServiceClient,
    _conformance_options: dict[str, object],
) -> None:
    root = _conformance_options.get("checkpoint_dir")
    if not conformance_backend.accepts_checkpoint_dir or root is None:
        pytest.skip(f"not applicable: backend {conformance_backend.name} takes no checkpoint_dir option")
    tc = training_client()
    _train(tc, conformance_backend.vocab_size, 1)
    path = tc.save_state(f"to-damage-{secrets.token_hex(4)}").result().path
    parsed = ts.ParsedCheckpointTinkerPath.from_tinker_path(path)
    # <checkpoint_dir>/<run>/<checkpoint id>; behind a server the run id on disk is the backend's own
    folders = [f for f in Path(str(root)).glob(f"*/{parsed.checkpoint_id}") if f.is_dir()]
    assert len(folders) == 1, f"[CKPT-14] {len(folders)} folders named {parsed.checkpoint_id} under the checkpoint_dir"
    files = sorted(f for f in folders[0].rglob("*") if f.is_file() and f.name != "checkpoint.json")
    assert files, f"[CKPT-14] no checkpoint files under the checkpoint_dir for {path}"
    biggest = max(files, key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # truncated, as by a crash
    with pytest.raises(ts.CorruptCheckpointError) as info:
        service.create_training_client_from_state_with_optimizer(path).result()
    assert info.value.path == path, f"[CKPT-14] error names {info.value.path!r}, not {path}"
    assert str(root) not in str(info.value), f"[CKPT-16] the error reveals a file-system path: {info.value}"


@pytest.mark.spec("CKPT-17", "CKPT-16")
def test_checkpoint_names_are_bounded(
    conformance_backend: ConformanceBackend, training_client: Factory, _conformance_options: dict[str, object]
) -> None:
    tc = training_client()
    for bad in ("n" * 5000, "n" * 201, "a/b", ".hidden"):
        with pytest.raises(ts.BadRequestError) as info:
            tc.save_state(bad)
        assert info.value.field == "name", f"[CKPT-17] {bad[:12]!r}: field {info.value.field!r}"
        root = _conformance_options.get("checkpoint_dir")
        assert root is None or str(root) not in str(info.value), f"[CKPT-16] path revealed: {info.value}"
    tc.save_weights_for_sampler("n" * 200).result()


@pytest.mark.spec("CKPT-15")
def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(
    conformance_backend: ConformanceBackend,
    service_factory: Callable[..., ts.ServiceClient],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if not conformance_backend.accepts_checkpoint_dir:
        pytest.skip(f"not applicable: backend {conformance_backend.name} takes no checkpoint_dir option")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("not applicable here: filling a file system needs root to mount a small tmpfs")
    mount = tmp_path_factory.mktemp("full") / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"not applicable here: cannot mount a tmpfs ({done.stderr.decode().strip()})")
    try:
        service = service_factory(checkpoint_dir=str(mount))
        tc = service.create_lora_training_client(base_model=conformance_backend.base_model, rank=4, seed=0).result()
        v = conformance_backend.vocab_size
        probe = probe_batch(v)
        _train(tc, v, 1)
        path = tc.save_state("keep").result().path
        saved = forward_logprobs(tc, probe)
        _train(tc, v, 1, offset=5)
        filler = fill_file_system(mount)
        with pytest.raises(ts.StorageFullError) as info:
            tc.save_state("keep", overwrite=True).result()
        assert str(mount) not in str(info.value), f"[CKPT-16] path revealed: {info.value}"
        filler.unlink()
        loaded = service.create_training_client_from_state(path).result()
        _assert_same_lps(forward_logprobs(loaded, probe), saved, "CKPT-15", "the previous checkpoint after ENOSPC")
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
