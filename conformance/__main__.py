"""``python -m tinker_std.conformance --backend mock [--report PATH | --certify OUTDIR] [-- pytest args]``
(also ``tinker-std conformance ...``).

Runs ``pytest --pyargs tinker_std.conformance`` with the conformance plugin against one backend
and prints the per-statement table and the verdict. ``--certify OUTDIR`` writes a certificate
there (``report.json``, ``summary.md``, ``badge.svg``, ``digest``; see ``certificate``), with
``--hypothesis-seed 0`` unless the pytest arguments give a seed. The exit status is pytest's
(0: every selected test passed); a backend that cannot be loaded exits with pytest's usage-error
status (4) and one message, and writes no report.

The run is hermetic to the directory it is started from: pytest reads an empty configuration file
of the run's own temporary folder (which is also its rootdir) and loads no ``conftest.py``, so a
caller's ``pytest.ini`` / ``pyproject.toml`` options (``addopts``, ``filterwarnings``, ...) and
conftest fixtures cannot change which tests run or how. Extra pytest arguments after ``--`` still
apply. The suite itself has no conftest (its fixtures are in the plugin); test ids in reports are
relative to the package (``report.normalized_nodeid``), so they do not depend on the rootdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .summary import format_table

__all__ = ["main", "pytest_args"]

#: Name of the plugin's ``pytest11`` entry point; blocked so that ``-p`` can load the module itself
#: whether or not the entry point is installed (loading it twice is an error).
ENTRY_POINT = "tinker_std_conformance"


def pytest_args(
    backend: str,
    report: str,
    backend_config: str | None = None,
    base_model: str | None = None,
    max_examples: int | None = None,
    extra: list[str] | None = None,
    isolated_in: Path | None = None,
) -> list[str]:
    """The pytest command line that runs the suite. Every option with a value is one ``--opt=value``
    argument: pytest counts each argument that names an existing path toward its rootdir, so a
    config file in another tree than the working directory, given as its own argument, moved the
    root there (and the caller's ``tests/conftest.py`` then applied to every test).

    ``isolated_in``: a folder of the run's own; pytest then takes an empty configuration file
    written there as its ini file, the folder as its rootdir, and loads no conftest (see the module
    docstring)."""
    isolation: list[str] = []
    if isolated_in is not None:
        ini = isolated_in / "pytest.ini"
        ini.write_text("[pytest]\n", encoding="utf-8")
        isolation = [f"--config-file={ini}", f"--rootdir={isolated_in}", "--noconftest"]
    args = [
        *isolation,
        "--pyargs",
        "tinker_std.conformance",
        "-p",
        f"no:{ENTRY_POINT}",
        "-p",
        "tinker_std.conformance.plugin",
        f"--tinker-backend={backend}",
        f"--tinker-report={report}",
    ]
    if backend_config:
        args.append(f"--tinker-backend-config={backend_config}")
    if base_model:
        args.append(f"--tinker-base-model={base_model}")
    if max_examples is not None:
        args.append(f"--tinker-max-examples={max_examples}")
    return args + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinker_std.conformance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--backend", default=None, help="backend name or module:Class (default $TINKER_STD_BACKEND)")
    parser.add_argument("--backend-config", default=None, help="JSON file of backend constructor options")
    parser.add_argument("--base-model", default=None, help="base model to test")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--report", default=None, help="report path (JSON; a .md is written next to it)")
    target.add_argument("--certify", default=None, metavar="OUTDIR", help="write a certificate folder there")
    parser.add_argument("--max-examples", type=int, default=None, help="Hypothesis examples per property test")
    parser.add_argument("--skip-file", default=None, help="known failures: test ids or statement ids, # reason")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    options = parser.parse_args(argv)

    import pytest

    backend = options.backend or os.environ.get("TINKER_STD_BACKEND") or "mock"
    extra = [*([f"--tinker-skip-file={options.skip_file}"] if options.skip_file else []), *options.pytest_args]
    if options.certify and not any(a.startswith("--hypothesis-seed") for a in extra):
        extra += ["--hypothesis-seed", "0"]
    with tempfile.TemporaryDirectory(prefix="tinker-conformance-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        if options.certify:
            outdir = Path(options.certify)
            outdir.mkdir(parents=True, exist_ok=True)
            for name in ("report.json", "report.md", "summary.md", "badge.svg", "digest"):
                (outdir / name).unlink(missing_ok=True)
            report = str(outdir / "report.json")
        else:
            report = options.report or str(Path(tmp) / "report.json")
        code = pytest.main(
            pytest_args(backend, report, options.backend_config, options.base_model, options.max_examples, extra, root)
        )
        path = Path(report)
        if path.is_file():
            print()
            print(format_table(json.loads(path.read_text(encoding="utf-8"))))
            if options.certify:
                from .certificate import write_certificate

                value = write_certificate(Path(options.certify))
                print(f"certificate written to {options.certify} ({value})")
            elif options.report:
                print(f"report written to {path} and {path.with_suffix('.md')}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
