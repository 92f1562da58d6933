"""Overwriting a checkpoint is atomic (spec CKPT-3, CheckpointStore): SIGKILL at every file-system step of
``save_state(..., overwrite=True)`` leaves the old checkpoint or the new one under the name, whole,
never neither and never a mix; a fresh process lists it once and loads it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import tinker_std as ts

CHILD = Path(__file__).with_name("checkpoint_crash_child.py")


def _child(checkpoint_dir: Path, kill_at: int) -> tuple[int, list[dict[str, object]]]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(checkpoint_dir), "mock", str(kill_at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines


def test_sigkill_at_every_step_of_an_overwrite_keeps_old_or_new(tmp_path: Path) -> None:
    rc, lines = _child(tmp_path / "clean", 0)
    assert rc == 0, lines
    operations = int(lines[1]["operations"])  # type: ignore[call-overload]
    assert operations >= 5  # files and metadata written, version renamed, link made and swapped, old removed

    outcomes = []
    for kill_at in range(1, operations + 2):
        root = tmp_path / f"kill-{kill_at}"
        rc, lines = _child(root, kill_at)
        assert rc == -signal.SIGKILL, f"kill point {kill_at}: the child was not killed ({rc}, {lines})"
        info = lines[0]
        path, old, new = str(info["path"]), float(info["old"]), float(info["new"])  # type: ignore[arg-type]
        assert old != new

        svc = ts.ServiceClient(backend="mock", checkpoint_dir=str(root))
        run_id = ts.ParsedCheckpointTinkerPath.from_tinker_path(path).training_run_id
        listed = svc.create_rest_client().list_checkpoints(run_id).result().checkpoints
        assert [c.tinker_path for c in listed] == [path], f"kill point {kill_at}: listed {listed}"
        tc = svc.create_training_client_from_state_with_optimizer(path).result()
        loss = float(tc.forward([_probe()], "cross_entropy").result().metrics["loss:sum"])
        assert loss in (old, new), f"kill point {kill_at}: loaded weights are neither old nor new"
        outcomes.append("new" if loss == new else "old")
        svc.close()
        # The next overwrite of the name commits and sweeps what the crash left: one version remains.
        store, parsed = ts.CheckpointStore(root), ts.ParsedCheckpointTinkerPath.from_tinker_path(path)
        with store.writing(parsed, True, store.read_metadata(parsed)) as staging:
            shutil.copytree(store.directory(parsed), staging, dirs_exist_ok=True)
        versions = [p.name for p in (root / run_id / "weights" / ".versions").iterdir()]
        assert versions == [store.directory(parsed).name]
        assert sorted(p.name for p in (root / run_id / "weights").iterdir()) == [".versions", "ckpt"]
    # Kills before the link swap keep the old checkpoint, kills after it the new one.
    assert outcomes == sorted(outcomes, key=["old", "new"].index) and outcomes[0] == "old" and outcomes[-1] == "new"


def _probe() -> ts.Datum:
    from checkpoint_crash_child import PROBE

    return PROBE


def test_overwrite_of_a_plain_folder_checkpoint_moves_it_into_versions(tmp_path: Path) -> None:
    store = ts.CheckpointStore(tmp_path)
    path = ts.ParsedCheckpointTinkerPath.build("run1", "training", "old")
    with store.writing(path, False, {"v": 1}):
        pass
    # Rewrite the layout as tinker-std 0.1.0 left it: a plain folder under the name.
    link, folder = store.link(path), store.directory(path)
    link.unlink()
    os.replace(folder, link)
    assert store.read_metadata(path)["v"] == 1 and not link.is_symlink()
    with store.writing(path, True, {"v": 2}):
        pass
    assert link.is_symlink() and store.read_metadata(path)["v"] == 2
    assert [p.name for p in (link.parent / ".versions").iterdir()] == [store.directory(path).name]
