"""``python -m tinker_std.conformance --backend mock [--report path] [-- pytest args]``.

Runs ``pytest --pyargs tinker_std.conformance`` with the conformance plugin against one backend
and prints a table of per-statement results. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

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
) -> list[str]:
    """The pytest command line that runs the suite."""
    args = [
        "--pyargs",
        "tinker_std.conformance",
        "-p",
        f"no:{ENTRY_POINT}",
        "-p",
        "tinker_std.conformance.plugin",
        "--tinker-backend",
        backend,
        "--tinker-report",
        report,
    ]
    if backend_config:
        args += ["--tinker-backend-config", backend_config]
    if base_model:
        args += ["--tinker-base-model", base_model]
    if max_examples is not None:
        args += ["--tinker-max-examples", str(max_examples)]
    return args + list(extra or [])


def format_table(data: dict[str, object]) -> str:
    """A plain-text table of the statements of a report."""
    statements = data.get("statements") or {}
    assert isinstance(statements, dict)
    rows = [("statement", "level", "result", "tests")]
    for sid, entry in statements.items():
        rows.append((sid, str(entry.get("level") or "?"), str(entry["result"]), str(len(entry["tests"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    summary = data.get("summary") or {}
    assert isinstance(summary, dict)
    lines.append("")
    lines.append(
        f"backend {data.get('backend')} (tolerance {data.get('tolerance_class')}), spec {data.get('spec_version')}: "
        + ", ".join(f"{v} {k}" for k, v in summary.items() if v)
    )
    not_covered = data.get("not_covered")
    if isinstance(not_covered, dict) and not_covered.get("MUST"):
        lines.append(f"MUST statements without a test: {', '.join(not_covered['MUST'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinker_std.conformance", description=__doc__)
    parser.add_argument("--backend", default=None, help="backend name or module:Class (default $TINKER_STD_BACKEND)")
    parser.add_argument("--backend-config", default=None, help="JSON file of backend constructor options")
    parser.add_argument("--base-model", default=None, help="base model to test")
    parser.add_argument("--report", default=None, help="report path (JSON; a .md is written next to it)")
    parser.add_argument("--max-examples", type=int, default=None, help="Hypothesis examples per property test")
    parser.add_argument("--skip-file", default=None, help="file of test ids or statement ids to skip")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    options = parser.parse_args(argv)

    import os

    import pytest

    backend = options.backend or os.environ.get("TINKER_STD_BACKEND") or "mock"
    with tempfile.TemporaryDirectory(prefix="tinker-conformance-") as tmp:
        report = options.report or str(Path(tmp) / "report.json")
        code = pytest.main(
            pytest_args(
                backend,
                report,
                options.backend_config,
                options.base_model,
                options.max_examples,
                [*(["--tinker-skip-file", options.skip_file] if options.skip_file else []), *options.pytest_args],
            )
        )
        path = Path(report)
        if path.is_file():
            print()
            print(format_table(json.loads(path.read_text(encoding="utf-8"))))
            if options.report:
                print(f"report written to {path} and {path.with_suffix('.md')}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
