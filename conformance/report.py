"""The conformance report (``--tinker-report PATH``): JSON plus a Markdown rendering next to it.

``Reporter`` is a pytest plugin that the conformance plugin registers; it records every
conformance test's outcome, the statement ids its failure names, and, at the end of the session,
writes the report built by ``build_report``. It imports nothing of the conformance plugin: the
plugin hands it a ``RunContext`` factory (the backend, skip file and options it resolved).

A session whose backend could not be loaded writes no report (``RunContext.load_error``).

Report keys (``REPORT_FORMAT``; statement results and verdict rules in ``verdict``)::

    format, verdict {conformant, text, target, reasons[{kind, statements, detail, justifications?}], rules},
    spec_version, backend, backend_class, base_model, capabilities, tolerance_class,
    suite {version, tinker_std_version, git_commit, git_dirty},
    spec {version, hash, hash_command, statements, must},
    provider {spec, module, package, version},
    environment {python, implementation, platform, machine, torch, hypothesis, device},
    hypothesis {max_examples, seed, derandomize, database},
    run {complete, args, selected, ran},
    skip_file {path, entries[{entry, line, reason, matched}], unmatched} | null,
    summary {result: count}, summary_by_origin {tinker|tinker-std: {result: count}},
    test_counts {outcome: count},
    statements {ID: {result, level, capability, origin, unverified, tests, failed_tests, messages}},
    tests [{nodeid, outcome, duration_s, statements, attributed, attribution, message, reason}],
    unknown_ids
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .provenance import environment, hypothesis_info, provider_package, spec_info, suite_info
from .spec_index import load_statements
from .summary import render_markdown
from .verdict import RESULTS, TEST_OUTCOMES, VERDICT_RULES, TestResult, attributed_ids, statement_results, verdict

__all__ = ["Reporter", "RunContext", "build_report", "REPORT_FORMAT", "NOT_DECLARED_MARK", "SKIP_FILE_MARK"]

REPORT_FORMAT = "tinker-std-conformance-report/1"
NOT_DECLARED_MARK = "not declared by backend"  # the plugin's skip reason for an undeclared capability
SKIP_FILE_MARK = "listed in skip file"  # the plugin's SKIP_FILE_REASON
#: Skip reasons of a test that does not apply to the backend (``verdict.TEST_OUTCOMES``).
NOT_APPLICABLE_MARKS = ("not applicable", "(tested positively)")
MAX_MESSAGE = 600
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class RunContext:
    """What the conformance plugin resolved, for the report.

    ``backend``: ``{spec, name, class, module, base_model, capabilities, tolerance_class}``.
    ``skip_file``: ``{path, entries[{entry, line, reason, matched}], unmatched}`` or ``None``.
    ``complete``: the whole suite was collected and every collected conformance test ran.
    ``load_error``: set when the backend could not be loaded (then no report is written).
    """

    backend: dict[str, Any]
    skip_file: dict[str, Any] | None
    max_examples: int
    hypothesis_seed: object
    complete: bool
    args: list[str] = field(default_factory=list)
    selected: int = 0
    load_error: str | None = None


def _crop(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)
    if isinstance(group, tuple) and isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in group for leaf in _leaves(inner)]
    return [exc]


def normalized_nodeid(nodeid: str, path: Path | None) -> str:
    """The node id relative to the conformance package (``test_x.py::test_y[...]``), so that
    reports do not depend on the rootdir pytest picked; other tests keep their node id."""
    _, sep, rest = nodeid.partition("::")
    if path is not None and sep:
        try:
            return f"{path.resolve().relative_to(PACKAGE_DIR).as_posix()}::{rest}"
        except ValueError:
            pass
    return nodeid


class Reporter:
    """Collects conformance test outcomes and writes the report at the end of the session."""

    def __init__(self, config: pytest.Config, path: str, context: Callable[[], RunContext]) -> None:
        self.config = config
        self.path = Path(path)
        self.context = context
        self.tests: dict[str, TestResult] = {}
        self._names: dict[str, str] = {}  # pytest node id -> normalized id
        self._tags: dict[str, list[str]] = {}  # pytest node id -> ids named by its failure

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        self._names.setdefault(item.nodeid, normalized_nodeid(item.nodeid, getattr(item, "path", None)))
        if report.failed and call.excinfo is not None and item.nodeid not in self._tags:
            leaves = _leaves(call.excinfo.value)
            tags = [sid for leaf in leaves for sid in attributed_ids(str(leaf))]
            self._tags[item.nodeid] = list(dict.fromkeys(tags))
            message = " | ".join(f"{type(leaf).__name__}: {leaf}" for leaf in leaves)
            report.user_properties.append(("tinker_std_message", _crop(message)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ids = [str(value) for name, value in report.user_properties if name == "spec"]
        if not ids and report.nodeid not in self.tests:
            if not any(name == "tinker_std_conformance" for name, _ in report.user_properties):
                return
        name = self._names.get(report.nodeid, report.nodeid)
        test = self.tests.setdefault(report.nodeid, TestResult(name, ids))
        test.duration_s += float(getattr(report, "duration", 0.0) or 0.0)
        if report.failed:
            if test.outcome != "failed":
                test.outcome = "failed"
                crafted = [str(v) for n, v in report.user_properties if n == "tinker_std_message"]
                test.message = f"{report.when}: " + (crafted[-1] if crafted else _crop(str(report.longrepr or "")))
                named = self._tags.get(report.nodeid, [])
                test.attributed = named or list(test.statements)
                test.attribution = "message" if named else "cited"
        elif report.skipped and test.outcome != "failed":
            if hasattr(report, "wasxfail"):
                test.outcome, test.reason = "known-failure", f"xfail: {report.wasxfail}"
                return
            longrepr = report.longrepr
            reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
            reason = reason.removeprefix("Skipped: ")
            test.reason = reason
            if NOT_DECLARED_MARK in reason:
                test.outcome = "not-declared"
            elif reason.startswith(SKIP_FILE_MARK):
                test.outcome = "known-failure"
            elif reason.startswith(NOT_APPLICABLE_MARKS[0]) or NOT_APPLICABLE_MARKS[1] in reason:
                test.outcome = "not-applicable"
            else:
                test.outcome = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        context = self.context()
        if context.load_error is not None:
            return
        data = build_report(list(self.tests.values()), context)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        self.path.with_suffix(".md").write_text(render_markdown(data), encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.path.is_file():
            markdown = self.path.with_suffix(".md")
            terminalreporter.write_line(f"tinker-std conformance report: {self.path} (+ {markdown})")


def build_report(tests: list[TestResult], context: RunContext) -> dict[str, Any]:
    """The report (module docstring) for the ``tests`` of one session."""
    known = load_statements()
    backend = context.backend
    declared = frozenset(backend.get("capabilities") or ())
    statements = statement_results(known, tests, declared)
    spec = spec_info()
    known_reasons: dict[str, str] = {}
    for test in tests:
        if test.outcome == "known-failure":
            for sid in test.statements:
                known_reasons.setdefault(sid, test.reason)
    outcome = verdict(
        known,
        statements,
        declared,
        spec_version=spec["version"],
        spec_hash=spec["hash"],
        tolerance_class=backend.get("tolerance_class"),
        complete=context.complete,
        known_reasons=known_reasons,
    )
    orphans = [t.nodeid for t in tests if t.outcome == "failed" and not t.attributed]
    if orphans:  # a failing test that cites and names no statement still withholds the verdict
        detail = "tests failed that cite and name no statement"
        reason = {"kind": "unattributed-failure", "statements": [], "tests": orphans, "detail": detail}
        outcome["reasons"].append(reason)
        if outcome["conformant"]:
            outcome["conformant"] = False
            outcome["text"] = f"not conformant to {outcome['target']}: {detail} ({', '.join(orphans[:4])})"
    outcome["rules"] = list(VERDICT_RULES)
    summary = {result: 0 for result in RESULTS}
    by_origin: dict[str, dict[str, int]] = {"tinker": dict(summary), "tinker-std": dict(summary)}
    for entry in statements.values():
        summary[entry["result"]] += 1
        if entry["origin"] in by_origin:
            by_origin[entry["origin"]][entry["result"]] += 1
    counts = {o: sum(1 for t in tests if t.outcome == o) for o in TEST_OUTCOMES}
    return {
        "format": REPORT_FORMAT,
        "verdict": outcome,
        "spec_version": spec["version"],
        "backend": backend.get("name"),
        "backend_class": backend.get("class"),
        "base_model": backend.get("base_model"),
        "capabilities": sorted(declared),
        "tolerance_class": backend.get("tolerance_class"),
        "suite": suite_info(),
        "spec": spec,
        "provider": {"spec": backend.get("spec"), **provider_package(backend.get("module"))},
        "environment": environment(),
        "hypothesis": hypothesis_info(context.max_examples, context.hypothesis_seed),
        "run": {"complete": context.complete, "args": context.args, "selected": context.selected, "ran": len(tests)},
        "skip_file": context.skip_file,
        "summary": summary,
        "summary_by_origin": by_origin,
        "test_counts": counts,
        "statements": statements,
        "tests": [t.as_dict() for t in sorted(tests, key=lambda t: t.nodeid)],
        "unknown_ids": sorted(s for s in statements if known and s not in known),
    }
