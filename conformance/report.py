"""Per-statement conformance report: JSON plus a markdown table (``--tinker-report``).

For every statement id cited by a ``@pytest.mark.spec`` marker of a test that ran, the result is

* ``fail``                 -- some test citing it failed (or errored in setup/teardown);
* ``pass``                 -- no test failed and at least one passed;
* ``known-failure``        -- only expected failures (``xfail``) and skips;
* ``skipped-not-declared`` -- every test citing it was skipped because the backend does not
  declare a capability the test needs;
* ``skipped-by-user``      -- every test citing it was skipped, at least one of them because the
  ``--tinker-skip-file`` lists it (the others for an undeclared capability);
* ``skipped``              -- skipped for another reason.

The JSON is ``{spec_version, backend, backend_class, base_model, capabilities, tolerance_class,
skip_file, summary, tests, statements: {id: {result, level, tests, messages}}, not_covered}``;
``skip_file`` is ``{path, entries, unmatched}`` or ``None``; ``not_covered`` lists, per level, the
statements of the spec (when its markdown is available) that no test cites.
This module imports nothing heavy at module level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .spec_index import load_statements

__all__ = ["Reporter", "RESULTS", "render_markdown", "aggregate"]

RESULTS = ("fail", "pass", "known-failure", "skipped-not-declared", "skipped-by-user", "skipped")
NOT_DECLARED_MARK = "not declared by backend"
SKIP_FILE_MARK = "listed in skip file"  # plugin.SKIP_FILE_REASON
MAX_MESSAGE = 600


@dataclass
class _TestOutcome:
    nodeid: str
    spec: list[str]
    outcome: str = "passed"  # passed | failed | skipped | xfailed | not-declared | skipped-by-user
    messages: list[str] = field(default_factory=list)


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(longrepr or "")
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def aggregate(outcomes: list[str]) -> str:
    """The statement result for the outcomes of the tests that cite it."""
    if "failed" in outcomes:
        return "fail"
    if "passed" in outcomes:
        return "pass"
    if "xfailed" in outcomes:
        return "known-failure"
    if outcomes and all(o == "not-declared" for o in outcomes):
        return "skipped-not-declared"
    if "skipped-by-user" in outcomes and all(o in ("not-declared", "skipped-by-user") for o in outcomes):
        return "skipped-by-user"
    return "skipped"


class Reporter:
    """Collects test outcomes by statement and writes the report at the end of the session."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = Path(path)
        self.tests: dict[str, _TestOutcome] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ids = [value for name, value in report.user_properties if name == "spec"]
        if not ids:
            return
        test = self.tests.setdefault(report.nodeid, _TestOutcome(report.nodeid, [str(i) for i in ids]))
        if report.failed:
            test.outcome = "failed"
            test.messages.append(f"{report.when}: {_message(report)}")
        elif report.skipped and test.outcome != "failed":
            if hasattr(report, "wasxfail"):
                test.outcome = "xfailed"
                test.messages.append(f"xfail: {report.wasxfail}")
            else:
                reason = _message(report)
                if NOT_DECLARED_MARK in reason:
                    test.outcome = "not-declared"
                elif SKIP_FILE_MARK in reason:
                    test.outcome = "skipped-by-user"
                else:
                    test.outcome = "skipped"
                test.messages.append(reason)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        data = self.build()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        self.path.with_suffix(".md").write_text(render_markdown(data), encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"tinker-std conformance report: {self.path} (+ {self.path.with_suffix('.md')})")

    # -- building ---------------------------------------------------------------------------

    def _backend_info(self) -> dict[str, Any]:
        from . import plugin

        resolved = plugin.resolved_backend(self.config)
        spec, base_model = plugin.report_options(self.config)
        cls = resolved.cls if resolved is not None else plugin.backend_class_for_report(self.config)
        info: dict[str, Any] = {"backend": spec, "backend_class": None, "base_model": base_model}
        if cls is not None:
            info["backend"] = cls.name
            info["backend_class"] = f"{cls.__module__}:{cls.__qualname__}"
            info["capabilities"] = sorted(cls.capabilities.optional)
            info["tolerance_class"] = cls.capabilities.tolerance
        if resolved is not None:
            info["base_model"] = resolved.base_model
        info["skip_file"] = plugin.skip_file_info(self.config)
        return info

    def build(self) -> dict[str, Any]:
        try:
            from tinker_std import SPEC_VERSION
        except Exception:  # pragma: no cover - a broken install still gets a report
            SPEC_VERSION = "unknown"
        known = load_statements()
        by_statement: dict[str, list[_TestOutcome]] = {}
        for test in self.tests.values():
            for sid in test.spec:
                by_statement.setdefault(sid, []).append(test)
        order = {sid: i for i, sid in enumerate(known)}
        statements: dict[str, Any] = {}
        for sid in sorted(by_statement, key=lambda s: (order.get(s, len(order)), s)):
            tests = by_statement[sid]
            messages = [f"{t.nodeid}: {m}" for t in tests for m in t.messages if t.outcome != "passed"]
            statements[sid] = {
                "result": aggregate([t.outcome for t in tests]),
                "level": known[sid].level if sid in known else None,
                "capability": known[sid].capability if sid in known else None,
                "tests": [t.nodeid for t in tests],
                "messages": messages,
            }
        summary = {result: sum(1 for s in statements.values() if s["result"] == result) for result in RESULTS}
        test_counts: dict[str, int] = {}
        for test in self.tests.values():
            test_counts[test.outcome] = test_counts.get(test.outcome, 0) + 1
        not_covered: dict[str, list[str]] = {"MUST": [], "SHOULD": [], "MAY": []}
        for sid, statement in known.items():
            if sid not in statements:
                not_covered[statement.level].append(sid)
        return {
            "spec_version": SPEC_VERSION,
            **self._backend_info(),
            "summary": summary,
            "tests": test_counts,
            "statements": statements,
            "unknown_ids": sorted(s for s in statements if known and s not in known),
            "not_covered": not_covered if known else None,
        }


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report as a markdown document with one table row per statement."""
    caps = ", ".join(f"`{c}`" for c in data.get("capabilities") or []) or "none"
    lines = [
        f"# tinker-std conformance report: `{data.get('backend')}`",
        "",
        f"- spec version: {data.get('spec_version')}",
        f"- backend class: `{data.get('backend_class')}`, base model: `{data.get('base_model')}`",
        f"- tolerance class: `{data.get('tolerance_class')}`; optional capabilities: {caps}",
        "- statements: " + ", ".join(f"{k} {v}" for k, v in data.get("summary", {}).items()),
    ]
    skip_file = data.get("skip_file")
    if skip_file:
        entries = ", ".join(f"`{e}`" for e in skip_file.get("entries", [])) or "none"
        lines.append(f"- skip file `{skip_file.get('path')}`: {entries}")
        if skip_file.get("unmatched"):
            lines.append("- skip-file entries matching no test: " + ", ".join(f"`{e}`" for e in skip_file["unmatched"]))
    lines += [
        "",
        "| Statement | Level | Result | Tests | Notes |",
        "|---|---|---|---|---|",
    ]
    for sid, entry in data.get("statements", {}).items():
        level = entry.get("level") or "?"
        if entry.get("capability"):
            level += f" (`{entry['capability']}`)"
        note = "; ".join(entry.get("messages", []))[:300].replace("|", "\\|")
        lines.append(f"| {sid} | {level} | {entry['result']} | {len(entry['tests'])} | {note} |")
    not_covered = data.get("not_covered")
    if not_covered:
        lines += ["", "## Not covered yet", ""]
        for level, ids in not_covered.items():
            lines.append(f"- {level}: {', '.join(ids) if ids else 'none'}")
    return "\n".join(lines) + "\n"
