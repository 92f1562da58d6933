"""Regression test of issue 19 (1): the conformance suite passes an independent, correct provider.

``tests/independent_backend`` is a provider written from the spec alone (torch's own AdamW,
``clip_grad_norm_``, ``log_softmax``, ``multinomial``; the spec's loss formulas and draw rule), in a
float32 and a bfloat16 variant declaring the ``fp32`` and ``bf16`` tolerance classes. Every
conformance failure against it is either a bug in that provider or a false failure of the suite,
so the suite must pass it: the run exits 0, and its report marks no statement ``fail``.

The default tier runs the whole suite on the float32 variant (about 20 s) and the loss and
optimizer modules on the bfloat16 one; the whole suite on bfloat16 (about 75 s) is ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SUITE = "tinker_std.conformance"
NUMERIC = tuple(f"{SUITE}.{m}" for m in ("test_losses", "test_optimizer"))


def _run(backend: str, selection: tuple[str, ...], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p),
        "TINKER_STD_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", *selection,
        "--tinker-backend", backend, "--tinker-report", str(report),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False)
    data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    return proc, data


def _failed_statements(report: Any) -> list[str]:
    statements = report.get("statements", {})
    items = statements.items() if isinstance(statements, dict) else ((s.get("id"), s) for s in statements)
    return sorted(
        str(sid)
        for sid, entry in items
        if isinstance(entry, dict) and entry.get("result", entry.get("status")) == "fail"
    )


def _assert_passes(backend: str, selection: tuple[str, ...], tmp_path: Path) -> None:
    proc, report = _run(backend, selection, tmp_path)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert report, f"no conformance report was written for {backend}:\n{tail}"
    failed = _failed_statements(report)
    assert proc.returncode == 0 and not failed, f"the suite fails a correct provider ({backend}) on {failed}:\n{tail}"


def test_the_suite_passes_the_float32_provider(tmp_path: Path) -> None:
    _assert_passes("independent_backend:IndependentBackend", (SUITE,), tmp_path)


def test_the_numeric_checks_pass_the_bfloat16_provider(tmp_path: Path) -> None:
    _assert_passes("independent_backend:IndependentBf16Backend", NUMERIC, tmp_path)


@pytest.mark.slow
def test_the_suite_passes_the_bfloat16_provider(tmp_path: Path) -> None:
    _assert_passes("independent_backend:IndependentBf16Backend", (SUITE,), tmp_path)
