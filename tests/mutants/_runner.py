"""Running the conformance suite against one backend in a fresh process (the mutation harness's
engine, shared by ``tests/test_mutation.py`` and ``python -m tests.mutation_score``).

Loaded by the subprocess itself as a pytest plugin (``-p mutants._runner``): it registers the
``no-shrink`` Hypothesis profile (a mutant only has to be caught, not minimised, and shrinking a
failing example is most of the time a failing property test takes), and applies a client-layer
mutant's replacement before any test runs (``mutants._mock.PatchingMock``), so that tests which never
construct the backend under test see it too.

By hand: ``PYTHONPATH=tests .venv/bin/python -m pytest -q -p no:cacheprovider -p mutants._runner
--pyargs <node ids> --tinker-backend mutants.ordering:X --tinker-report r.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import Phase, settings

if TYPE_CHECKING:
    from ._forkserver import ForkServer

__all__ = ["TESTS_DIR", "FAST_OPTIONS", "suite_env", "run_suite"]

#: ``tests/``: put on the subprocess's ``PYTHONPATH`` so that ``mutants.<module>:<Class>`` imports.
TESTS_DIR = Path(__file__).resolve().parent.parent

settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])

#: Ten examples per property test from a fixed seed and no shrinking: a run is the same on every machine
#: (a fresh clone has no Hypothesis database; with 3 random examples CispoUnclippedWeight survived once).
FAST_OPTIONS = (
    "--tinker-max-examples",
    "10",
    "-p",
    "mutants._runner",
    "--hypothesis-profile",
    "no-shrink",
    "--hypothesis-seed",
    "0",
)


def pytest_configure(config: pytest.Config) -> None:
    """Apply the replacement of a client-layer mutant under test (see ``mutants._mock``)."""
    spec = config.getoption("--tinker-backend", default=None) or ""
    module_name, _, attr = spec.partition(":")
    if module_name.startswith("mutants.") and attr:
        patch = getattr(getattr(importlib.import_module(module_name), attr), "patch", None)
        if callable(patch):
            patch()


def suite_env(tmp_path: Path) -> dict[str, str]:
    """What a suite run adds to the environment: ``tests/`` importable, its own checkpoint folder,
    one intra-op thread (tiny models: threads only add contention when runs overlap)."""
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p),
        "TINKER_STD_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "OMP_NUM_THREADS": "1",
    }


def run_suite(
    backend: str,
    tmp_path: Path,
    selection: Sequence[str],
    *extra: str,
    timeout: float = 600,
    server: ForkServer | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the conformance suite (``selection``: ``--pyargs`` targets such as
    ``tinker_std.conformance.test_training::test_x``) against ``backend`` in a fresh process, with
    ``tests/`` importable; return the process and its ``--tinker-report`` (``{}`` if none).

    With ``server`` the process is a child forked by that ``ForkServer`` (same outcome, without
    paying the imports again); otherwise a new interpreter."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.json"
    args = [
        "-q", "-p", "no:cacheprovider", "--pyargs", *selection,
        "--tinker-backend", backend, "--tinker-report", str(report), *extra,
    ]  # fmt: skip
    env = suite_env(tmp_path)
    if server is not None:
        log = tmp_path / "output.txt"
        rc = server.run(args, tmp_path, env, log, timeout)
        proc = subprocess.CompletedProcess(args, rc, log.read_text(encoding="utf-8", errors="replace"), "")
    else:
        command = [sys.executable, "-m", "pytest", *args]
        full_env = {**os.environ, **env}
        proc = subprocess.run(
            command, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
        )
    data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    return proc, data
