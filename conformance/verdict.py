"""Statement results and the overall verdict of a conformance run (pure functions, no pytest).

The rules are written out in spec/README.md ("Conformance reports and verdict") and repeated in
every report (``VERDICT_RULES``). In short:

* a failing test's failure is **attributed** to the statement ids its assertion message names as
  ``[ID]``; only when the message names none is it attributed to every id the test cites, and the
  test entry says ``"attribution": "cited"``;
* a statement **passes** only when every test citing it ran and passed (tests that skipped
  themselves as not applicable aside);
* ``unverified`` statements are never ``pass``;
* the run is **conformant** only if every statement *required* of the declared capabilities
  (every MUST statement without a capability tag, and every statement whose capability is
  declared) is ``pass``. Anything else makes it "not conformant", with the reasons listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .spec_index import Statement

__all__ = [
    "RESULTS",
    "SATISFIED",
    "TEST_OUTCOMES",
    "VERDICT_RULES",
    "TestResult",
    "attributed_ids",
    "statement_results",
    "verdict",
]

#: Statement results, most severe first.
RESULTS = (
    "fail",  # a failure was attributed to it
    "known-failure",  # a test citing it is a known failure (skip file entry, or xfail)
    "unverified",  # the spec marks it unverified: no black-box check exists
    "inconclusive",  # a test citing it failed on other statements, so it was not fully checked
    "skipped",  # a test citing it was skipped (for a capability it does not itself depend on, or otherwise)
    "skipped-not-declared",  # it belongs to an optional capability the backend does not declare
    "not-run",  # no test citing it ran in this session (deselected, or no test cites it)
    "not-applicable",  # every test citing it found nothing to check on this backend (counts as satisfied)
    "pass",  # every test citing it ran and passed
)
#: Results that satisfy a required statement.
SATISFIED = ("pass", "not-applicable")
#: Test outcomes in a report. ``not-applicable``: the test skipped itself because what it checks
#: does not arise on this backend (its skip reason starts with ``not applicable``), for example the
#: refusal of an undeclared capability on a backend that declares it.
TEST_OUTCOMES = ("passed", "failed", "known-failure", "not-declared", "skipped", "not-applicable")

VERDICT_RULES = (
    "A failing test's failure counts against the statement ids named as [ID] in its assertion message; "
    "when the message names none, against every id the test cites (the test says attribution: cited).",
    "A statement passes only when every test citing it ran and passed. A statement the spec marks "
    "unverified is reported unverified, never pass.",
    "A test that skips itself as not applicable (what it checks does not arise on this backend) counts "
    "neither way; a statement all of whose tests are not applicable is not-applicable, which satisfies it.",
    "Required statements: every MUST statement without a capability tag (whatever the backend declares, "
    "CAP-1), and every statement tagged with a capability the backend declares.",
    "Conformant to spec X (hash) for capabilities Y only if every required statement passed in a full run "
    "of the suite. Otherwise not conformant, with the reasons: failed, known failures (skip-file entries "
    "with their written justification), unverified, and not checked (skipped, inconclusive, not run).",
    "SHOULD statements and MAY statements of undeclared capabilities are reported but do not decide the verdict.",
)

TAG_RE = re.compile(r"\[([A-Z]+-\d+)\]")


def attributed_ids(message: str) -> list[str]:
    """The statement ids a failure message names as ``[ID]``, in order, without duplicates."""
    return list(dict.fromkeys(TAG_RE.findall(message)))


@dataclass
class TestResult:
    """One test of the run.

    ``outcome``: one of ``TEST_OUTCOMES``. ``attributed``: the ids its failure counts against.
    ``attribution``: ``"message"`` (named in the failure message), ``"cited"`` (the message named
    none) or ``None`` (not failed). ``reason``: the skip reason or known-failure justification.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    nodeid: str
    statements: list[str]
    outcome: str = "passed"
    duration_s: float = 0.0
    message: str = ""
    attributed: list[str] = field(default_factory=list)
    attribution: str | None = None
    reason: str = ""
    needs: list[str] = field(default_factory=list)  # undeclared capabilities it was skipped for

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "duration_s": round(self.duration_s, 3),
            "statements": list(self.statements),
            "attributed": list(self.attributed),
            "attribution": self.attribution,
            "message": self.message,
            "reason": self.reason,
        }


def _result(statement: Statement | None, tests: Sequence[TestResult], sid: str, declared: frozenset[str]) -> str:
    if tests and all(t.outcome == "not-applicable" for t in tests):
        return "not-applicable"
    tests = [t for t in tests if t.outcome != "not-applicable"]
    failed_here = any(t.outcome == "failed" and sid in t.attributed for t in tests)
    if failed_here:
        return "fail"
    if any(t.outcome == "known-failure" for t in tests):
        return "known-failure"
    if statement is not None and statement.unverified:
        return "unverified"
    if statement is not None and statement.capability and statement.capability not in declared:
        return "skipped-not-declared"
    if not tests:
        return "not-run"
    if any(t.outcome == "failed" for t in tests):
        return "inconclusive"
    if any(t.outcome == "skipped" for t in tests):
        return "skipped"
    if any(t.outcome == "not-declared" for t in tests):
        if statement is None and all(t.outcome == "not-declared" for t in tests):
            return "skipped-not-declared"  # an id the spec does not define: nothing better to say
        # A test that needs a capability the backend does not declare may also cite statements
        # that need none; its skip does not count against them when tests without that need
        # checked them and passed. A statement checked only by such tests stays "skipped", so
        # declaring less never turns a required statement into a pass (CAP-1).
        if not any(t.outcome == "passed" for t in tests):
            return "skipped"
    return "pass"


def statement_results(
    statements: Mapping[str, Statement], tests: Iterable[TestResult], declared: frozenset[str]
) -> dict[str, dict[str, Any]]:
    """``{id: entry}`` for every statement of the spec plus every id a test cites or names.

    An entry is ``{result, level, capability, origin, unverified, tests, failed_tests, messages}``:
    ``tests`` are the node ids citing it, ``failed_tests`` those whose failure is attributed to it,
    ``messages`` the failure messages and skip reasons that explain a non-pass result.
    """
    tests = list(tests)
    citing: dict[str, list[TestResult]] = {}
    for test in tests:
        for sid in dict.fromkeys([*test.statements, *test.attributed]):
            citing.setdefault(sid, []).append(test)
    order = {sid: i for i, sid in enumerate(statements)}
    ids = sorted(set(statements) | set(citing), key=lambda s: (order.get(s, len(order)), s))
    out: dict[str, dict[str, Any]] = {}
    for sid in ids:
        statement = statements.get(sid)
        mine = citing.get(sid, [])
        result = _result(statement, mine, sid, declared)
        messages: list[str] = []
        if result not in SATISFIED:
            for t in mine:
                if t.outcome == "failed":
                    note = "" if sid in t.attributed else " (failed on " + ", ".join(t.attributed) + ")"
                    messages.append(f"{t.nodeid}: {t.message}{note}" if not note else f"{t.nodeid}{note}")
                elif t.outcome not in ("passed", "not-applicable"):
                    messages.append(f"{t.nodeid}: {t.outcome}: {t.reason}")
        out[sid] = {
            "result": result,
            "level": statement.level if statement else None,
            "capability": statement.capability if statement else None,
            "origin": statement.origin if statement else None,
            "unverified": statement.unverified if statement else False,
            "tests": [t.nodeid for t in mine],
            "failed_tests": [t.nodeid for t in mine if t.outcome == "failed" and sid in t.attributed],
            "messages": messages,
        }
    return out


def _reason_text(reason: Mapping[str, Any]) -> str:
    ids: list[str] = reason["statements"]
    if not ids:
        return str(reason["detail"])
    shown = ", ".join(ids[:8]) + ("..." if len(ids) > 8 else "")
    return f"{reason['detail']} ({len(ids)}: {shown})"


def required(statement: Statement, declared: frozenset[str]) -> bool:
    """Whether the verdict requires ``statement`` of a backend declaring ``declared``."""
    if statement.capability:
        return statement.capability in declared
    return statement.level == "MUST"


def verdict(
    statements: Mapping[str, Statement],
    results: Mapping[str, Mapping[str, Any]],
    declared: frozenset[str],
    *,
    spec_version: str,
    spec_hash: str | None,
    tolerance_class: str | None,
    complete: bool,
    known_reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{conformant, text, reasons}`` under ``VERDICT_RULES``.

    ``reasons`` is a list of ``{kind, statements, detail}``; ``known_reasons`` maps a statement id
    to the written justification of its known failure."""
    caps = ", ".join(sorted(declared)) or "none"
    target = f"tinker-std spec {spec_version} ({spec_hash or 'spec text unavailable'}) for capabilities [{caps}]"
    if tolerance_class:
        target += f", tolerance class {tolerance_class}"
    reasons: list[dict[str, Any]] = []
    if not statements:
        reasons.append({"kind": "no-spec", "statements": [], "detail": "the spec's markdown was not available"})
    if not complete:
        reasons.append(
            {"kind": "partial-run", "statements": [], "detail": "a selection of the suite ran (-k, -m or test ids)"}
        )
    buckets: dict[str, list[str]] = {}
    for sid, statement in statements.items():
        if not required(statement, declared):
            continue
        result = results.get(sid, {}).get("result", "not-run")
        if result not in SATISFIED:
            buckets.setdefault(result, []).append(sid)
    for kind in RESULTS:
        ids = buckets.get(kind)
        if not ids:
            continue
        detail = {
            "fail": "required statements failed",
            "known-failure": "required statements are recorded as known failures",
            "unverified": "required statements cannot be checked black-box (spec: unverified)",
            "inconclusive": "required statements were not fully checked: a test citing them failed elsewhere",
            "skipped": "required statements were not checked: their tests were skipped",
            "skipped-not-declared": "required statements were skipped as not declared",
            "not-run": "required statements were not checked: no test citing them ran",
        }[kind]
        reason: dict[str, Any] = {"kind": kind, "statements": ids, "detail": detail}
        if kind == "known-failure" and known_reasons:
            reason["justifications"] = {sid: known_reasons.get(sid, "no reason given") for sid in ids}
        reasons.append(reason)
    conformant = not reasons
    text = ("conformant to " if conformant else "not conformant to ") + target
    if not conformant:
        text += ": " + "; ".join(_reason_text(r) for r in reasons)
    return {"conformant": conformant, "text": text, "target": target, "reasons": reasons}
