"""The report means what it says: the statement annotation parser, failure attribution by ``[ID]``,
per-statement results and the verdict rules (conformance/verdict.py, spec/README.md)."""

from __future__ import annotations

import hashlib

import pytest

from tinker_std.conformance.spec_index import (
    SpecFormatError,
    Statement,
    load_statements,
    parse_statement,
    spec_dir,
    spec_files,
    spec_hash,
)
from tinker_std.conformance.verdict import TestResult, attributed_ids, statement_results, verdict


def test_every_annotation_form_parses() -> None:
    plain = parse_statement("- **FB-1** [MUST] text here", "02.md", 3)
    assert plain == Statement("FB-1", "MUST", None, "02.md", "tinker", False, "text here")
    full = parse_statement("- **SMP-9** [MUST, capability `seeded_sampling`, tinker-std, unverified] Unverified: x")
    assert full is not None and full.capability == "seeded_sampling"
    assert (full.origin, full.unverified) == ("tinker-std", True)
    ours = parse_statement("- **ERR-9** [MUST, tinker-std] wording")
    assert ours is not None and (ours.origin, ours.unverified, ours.capability) == ("tinker-std", False, None)
    unv = parse_statement("- **LORA-9** [SHOULD, unverified] Unverified: internal")
    assert unv is not None and unv.unverified and unv.origin == "tinker" and unv.level == "SHOULD"
    assert parse_statement("- prose that mentions **FB-1**") is None
    for bad in (
        "- **FB-1** [MUST, unverified, tinker-std] out of order",
        "- **FB-1** [MUST, capability introspection] no backticks",
        "- **FB-1** [MUSTNT] level",
        "- **FB-1** [MUST, tinkerstd] typo",
    ):
        with pytest.raises(SpecFormatError, match=r"x\.md:7"):
            parse_statement(bad, "x.md", 7)


def test_the_spec_parses_and_its_hash_is_the_documented_command() -> None:
    folder = spec_dir()
    assert folder is not None
    statements = load_statements(folder)
    assert len(statements) > 100 and all(s.origin in ("tinker", "tinker-std") for s in statements.values())
    assert statements["TOL-1"].file == "README.md"
    files = spec_files(folder)
    assert files[0].name == "README.md" and [f.name for f in files[1:]] == sorted(f.name for f in files[1:])
    # cat spec/README.md spec/[0-9][0-9]-*.md | sha256sum
    assert spec_hash(folder) == "sha256:" + hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


SPEC = {
    "A-1": Statement("A-1", "MUST", None, "a.md"),
    "A-2": Statement("A-2", "MUST", None, "a.md"),
    "A-3": Statement("A-3", "MUST", None, "a.md", unverified=True),
    "A-4": Statement("A-4", "MAY", "soft_targets", "a.md"),
    "A-5": Statement("A-5", "MUST", None, "a.md", origin="tinker-std"),
    "A-6": Statement("A-6", "SHOULD", None, "a.md"),
}


def _failed(nodeid: str, cited: list[str], message: str) -> TestResult:
    named = attributed_ids(message)
    return TestResult(nodeid, cited, "failed", message=message, attributed=named or cited,
                      attribution="message" if named else "cited")  # fmt: skip


def _results(tests: list[TestResult], declared: frozenset[str] = frozenset()) -> dict[str, str]:
    return {sid: e["result"] for sid, e in statement_results(SPEC, tests, declared).items()}


def _verdict(tests: list[TestResult], declared: frozenset[str] = frozenset()) -> dict[str, object]:
    results = statement_results(SPEC, tests, declared)
    return verdict(SPEC, results, declared, spec_version="0.1", spec_hash="sha256:x", tolerance_class="fp32",
                   complete=True)  # fmt: skip


def test_a_failure_counts_against_the_ids_its_message_names() -> None:
    tests = [_failed("t1", ["A-1", "A-2"], "AssertionError: [A-2] loss mismatch"), TestResult("t2", ["A-1"])]
    results = _results(tests)
    assert results["A-2"] == "fail" and results["A-1"] == "inconclusive"  # t1 failed elsewhere: not checked
    untagged = _results([_failed("t1", ["A-1", "A-2"], "KeyError: 'weights'")])
    assert untagged["A-1"] == untagged["A-2"] == "fail"  # no [ID]: the cited ids, flagged "cited"
    named_elsewhere = _results([_failed("t1", ["A-1"], "[A-5] wording")])
    assert named_elsewhere["A-5"] == "fail" and named_elsewhere["A-1"] == "inconclusive"


def test_a_statement_passes_only_when_every_citing_test_ran_and_passed() -> None:
    tests = [TestResult("t1", ["A-1"]), TestResult("t2", ["A-1"], "skipped", reason="no EOS")]
    assert _results(tests)["A-1"] == "skipped"
    assert _results([TestResult("t1", ["A-1"]), TestResult("t3", ["A-1"])])["A-1"] == "pass"
    assert _results([TestResult("t1", ["A-3"])])["A-3"] == "unverified"  # never pass
    assert _results([])["A-1"] == "not-run"
    na = [TestResult("t1", ["A-1"], "not-applicable"), TestResult("t2", ["A-1"])]
    assert _results(na)["A-1"] == "pass" and _results(na[:1])["A-1"] == "not-applicable"


def test_the_verdict_requires_every_applicable_must_statement() -> None:
    passing = [TestResult(f"t{sid}", [sid]) for sid in ("A-1", "A-2", "A-5")]
    ok = _verdict(passing)
    assert ok["conformant"] is False  # A-3 is unverified: no conformant verdict while it is
    assert [r["kind"] for r in ok["reasons"]] == ["unverified"]  # type: ignore[index]
    spec = {k: v for k, v in SPEC.items() if k != "A-3"}
    results = statement_results(spec, passing, frozenset())
    clean = verdict(spec, results, frozenset(), spec_version="0.1", spec_hash="sha256:x", tolerance_class=None,
                    complete=True)  # fmt: skip
    assert clean["conformant"] and clean["text"].startswith("conformant to tinker-std spec 0.1 (sha256:x)")
    partial = verdict(spec, results, frozenset(), spec_version="0.1", spec_hash="sha256:x", tolerance_class=None,
                      complete=False)  # fmt: skip
    assert not partial["conformant"] and partial["reasons"][0]["kind"] == "partial-run"
    declared = frozenset({"soft_targets"})  # a declared capability's statements become required
    assert "A-4" in str(verdict(spec, statement_results(spec, passing, declared), declared, spec_version="0.1",
                                spec_hash=None, tolerance_class=None, complete=True)["reasons"])  # fmt: skip


def test_declaring_less_never_gives_a_cleaner_verdict() -> None:
    """CAP-1: a MUST statement whose only test needs an undeclared capability is not checked, so it
    withholds the verdict instead of disappearing."""
    needs = TestResult("t1", ["A-1"], "not-declared", reason="capability introspection not declared by backend x")
    results = _results([needs, TestResult("t2", ["A-4"], "not-declared")])
    assert results["A-1"] == "skipped" and results["A-4"] == "skipped-not-declared"
    reasons = _verdict([needs])["reasons"]
    assert any(r["kind"] == "skipped" and "A-1" in r["statements"] for r in reasons)  # type: ignore[union-attr]


def test_a_capability_skip_does_not_withhold_a_statement_other_tests_checked() -> None:
    """A test that needs an undeclared capability may also cite capability-free statements: its
    skip leaves them to the tests that ran (pass when those passed), but never makes a statement
    pass on its own, and a plain skip still withholds."""
    needs = TestResult("t1", ["A-1"], "not-declared", reason="capability introspection not declared by backend x")
    assert _results([needs, TestResult("t2", ["A-1"])])["A-1"] == "pass"
    assert _results([needs])["A-1"] == "skipped"
    assert _results([needs, TestResult("t3", ["A-1"], "skipped", reason="no EOS")])["A-1"] == "skipped"
    assert _results([needs, _failed("t4", ["A-1"], "AssertionError: [A-1] wrong")])["A-1"] == "fail"


def test_a_known_failure_is_listed_with_its_justification() -> None:
    known = TestResult("t1", ["A-1"], "known-failure", reason="listed in skip file (A-1): upstream bug #12")
    results = statement_results(SPEC, [known], frozenset())
    assert results["A-1"]["result"] == "known-failure"
    out = verdict(SPEC, results, frozenset(), spec_version="0.1", spec_hash=None, tolerance_class=None, complete=True,
                  known_reasons={"A-1": known.reason})  # fmt: skip
    reason = next(r for r in out["reasons"] if r["kind"] == "known-failure")
    assert not out["conformant"] and reason["justifications"] == {"A-1": known.reason}
