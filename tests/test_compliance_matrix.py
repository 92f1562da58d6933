"""The README's compliance matrix is generated from reports, and ``--check`` catches a stale one."""

from __future__ import annotations

import json
from pathlib import Path

from tinker_std.conformance.matrix import END, START, main, render

REPORT = {
    "spec_version": "0.1",
    "backend": "demo",
    "capabilities": ["introspection"],
    "tolerance_class": "fp32",
    "statements": {
        "FB-1": {"result": "pass", "level": "MUST"},
        "FB-2": {"result": "fail", "level": "MUST"},
        "SMP-12": {"result": "skipped-not-declared", "level": "MAY"},
    },
}


def test_render_counts_results_per_backend_and_prefix() -> None:
    text = render([REPORT])
    assert "| `demo` | fp32 | `introspection` | 1 | 1 | 1 | 0 |" in text
    assert "| FB | 1/2 (1 FAIL) |" in text
    assert "| SMP | 0/1 (1 not declared) |" in text
    assert "| FB-2 | MUST | FAIL |" in text


def test_check_fails_on_a_stale_block_and_write_fixes_it(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    report.write_text(json.dumps(REPORT))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\nafter\n")
    assert main([str(report), "--readme", str(readme), "--check"]) == 1
    assert main([str(report), "--readme", str(readme), "--write"]) == 0
    assert main([str(report), "--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\nafter\n") and "old" not in text
