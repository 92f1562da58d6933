"""The published certificates in ``conformance/results/<provider>/`` (ours and third parties'):
each folder is complete and well formed, its digest recomputes, its summary and badge render from
its report, and the README's compliance matrix is the one they give (CI fails otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinker_std.conformance.certificate import FILES, canonical, digest, verify
from tinker_std.conformance.matrix import END, RESULTS_DIR, START, load_results, render
from tinker_std.conformance.spec_index import ID_RE
from tinker_std.conformance.verdict import RESULTS, TEST_OUTCOMES

README = Path(__file__).resolve().parent.parent / "README.md"
FOLDERS = sorted(p.parent for p in RESULTS_DIR.glob("*/report.json"))
#: Keys every certificate's report carries (report.py's docstring is the full schema).
TOP_KEYS = {
    "format", "verdict", "spec_version", "backend", "backend_class", "capabilities", "tolerance_class", "suite",
    "spec", "provider", "environment", "hypothesis", "run", "skip_file", "summary", "summary_by_origin",
    "test_counts", "statements", "tests",
}  # fmt: skip
STATEMENT_KEYS = {"result", "level", "capability", "origin", "unverified", "tests", "failed_tests", "messages"}
TEST_KEYS = {"nodeid", "outcome", "duration_s", "statements", "attributed", "attribution", "message", "reason"}


def test_there_are_certificates() -> None:
    assert {"mock", "minimal"} <= {f.name for f in FOLDERS}, FOLDERS


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_the_certificate_is_well_formed_and_its_digest_recomputes(folder: Path) -> None:
    assert {p.name for p in folder.iterdir()} == set(FILES), sorted(p.name for p in folder.iterdir())
    assert verify(folder) == []
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert (folder / "digest").read_text().strip() == digest(report)
    assert TOP_KEYS <= set(report), sorted(TOP_KEYS - set(report))
    assert report["format"] == "tinker-std-conformance-report/1"
    assert str(report["spec"]["hash"]).startswith("sha256:") and report["spec_version"] == report["spec"]["version"]
    for sid, entry in report["statements"].items():
        assert ID_RE.match(sid) and STATEMENT_KEYS <= set(entry) and entry["result"] in RESULTS, (sid, entry)
    for test in report["tests"]:
        assert TEST_KEYS <= set(test) and test["outcome"] in TEST_OUTCOMES, test
    summary = {r: sum(1 for e in report["statements"].values() if e["result"] == r) for r in RESULTS}
    assert report["summary"] == summary
    assert report["verdict"]["conformant"] == (report["verdict"]["reasons"] == [])
    assert report["verdict"]["text"].startswith("conformant" if report["verdict"]["conformant"] else "not conformant")


def test_the_digest_leaves_out_only_the_volatile_fields() -> None:
    report = json.loads((FOLDERS[0] / "report.json").read_text(encoding="utf-8"))
    moved = {**report, "environment": {"python": "9.9"}, "suite": {**report["suite"], "git_commit": "x"}}
    assert digest(moved) == digest(report)
    changed = json.loads(json.dumps(report))
    next(iter(changed["statements"].values()))["result"] = "fail"
    assert digest(changed) != digest(report)
    assert b'"duration_s"' not in canonical(report) and b'"environment"' not in canonical(report)


def test_the_readme_matrix_is_generated_from_the_results_folder() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split(START, 1)[1].split(END, 1)[0].strip("\n")
    assert block == render(load_results(RESULTS_DIR)), (
        "README compliance matrix is stale: python -m tinker_std.conformance.matrix "
        "--results conformance/results --readme README.md --write"
    )
