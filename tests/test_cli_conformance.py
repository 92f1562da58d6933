"""``tinker-std conformance`` hands its arguments to the suite and prints the per-statement table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def test_conformance_subcommand_runs_the_suite_and_writes_a_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tinker_std.cli", "conformance", "--backend", "mock", "--report", str(report)]
    out = subprocess.run([*cmd, "--", "-q", "-k", "test_tolerance_rule or test_types_have_the_listed_fields"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(report.read_text())
    assert data["backend"] == "mock" and data["statements"]["TOL-2"]["result"] == "pass"
    assert "TOL-2" in out.stdout and "pass" in out.stdout
    assert data["statements"]["FB-1"]["result"] == "not-run" and not data["run"]["complete"]
    assert "not conformant" in out.stdout and "a selection of the suite ran" in out.stdout


def test_a_backend_that_cannot_load_exits_with_one_message_and_no_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tinker_std.cli", "conformance", "--backend", "no_such_module:Backend"]
    out = subprocess.run([*cmd, "--report", str(report), "--", "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 4, text
    assert text.count("cannot load") == 1 and text.count("no_such_module") == 2, text  # one line names it twice
    assert "ERROR: cannot load tinker-std backend 'no_such_module:Backend': ModuleNotFoundError" in text
    assert " passed" not in text and not report.exists() and not report.with_suffix(".md").exists()


def test_a_config_file_elsewhere_does_not_move_the_suites_root(tmp_path: Path) -> None:
    """``--backend-config`` (and the report, skip file) reach pytest as ``--opt=path``: a path given
    as a separate argument counts toward pytest's rootdir, and a config file in another tree than
    the working directory (their only common ancestor ``/``) moved the root to the config's folder,
    after which the caller's own ``tests/conftest.py`` applied to every conformance test (here one
    whose autouse fixture fails)."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("needs a writable folder outside /tmp's tree (/dev/shm)")
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(autouse=True)\ndef _foreign():\n"
        "    raise RuntimeError('a conftest of the caller ran in the conformance suite')\n"
    )
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        config, report = Path(elsewhere) / "backend.json", Path(elsewhere) / "report.json"
        config.write_text("{}")
        cmd = [sys.executable, "-m", "tinker_std.cli", "conformance", "--backend", "mock"]
        cmd += ["--backend-config", str(config), "--report", str(report)]
        out = subprocess.run([*cmd, "--", "-q", "-p", "no:cacheprovider", "-k", "test_tolerance_rule"],
                             capture_output=True, text=True, timeout=300, cwd=project)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "a conftest of the caller" not in out.stdout + out.stderr
        assert json.loads(report.read_text())["statements"]["TOL-2"]["result"] == "pass"


def test_the_callers_pytest_configuration_and_conftests_do_not_apply(tmp_path: Path) -> None:
    """The CLI runs the suite hermetically: started from a project whose ``pytest.ini`` deselects
    everything (``addopts = -m ...``) and whose root ``conftest.py`` has a failing autouse
    fixture, the selected conformance test still runs and passes. Before, both applied: the
    ini's ``addopts`` deselected the test (TOL-2 "not-run"), the root conftest's fixture failed it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\naddopts = -m never_selected\n")
    (project / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(autouse=True)\ndef _foreign():\n"
        "    raise RuntimeError('a conftest of the caller ran in the conformance suite')\n"
    )
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tinker_std.cli", "conformance", "--backend", "mock", "--report", str(report)]
    out = subprocess.run([*cmd, "--", "-q", "-p", "no:cacheprovider", "-k", "test_tolerance_rule"],
                         capture_output=True, text=True, timeout=300, cwd=project)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "a conftest of the caller" not in text, text
    assert json.loads(report.read_text())["statements"]["TOL-2"]["result"] == "pass"
