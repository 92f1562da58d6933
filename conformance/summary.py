"""Human-readable renderings of a conformance report: the Markdown document written next to the
JSON (and as a certificate's ``summary.md``) and the plain-text table the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .verdict import RESULTS

__all__ = ["render_markdown", "format_table"]


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def _ids(ids: list[str], limit: int = 24) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _counts(summary: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in summary.items() if n) or "none"


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report as Markdown: verdict and reasons, provenance, skip file, then one row per
    statement that did not pass, most severe first (those no test checked on one line), and every
    statement in a details block."""
    verdict = data.get("verdict") or {}
    suite, spec, provider = data.get("suite") or {}, data.get("spec") or {}, data.get("provider") or {}
    env, hyp = data.get("environment") or {}, data.get("hypothesis") or {}
    caps = ", ".join(f"`{c}`" for c in data.get("capabilities") or []) or "none"
    commit = suite.get("git_commit")
    lines = [
        f"# tinker-std conformance report: `{data.get('backend')}`",
        "",
        f"**{'Conformant' if verdict.get('conformant') else 'Not conformant'}.** {verdict.get('text', '')}",
        "",
    ]
    for reason in verdict.get("reasons") or []:
        ids = _ids(reason.get("statements") or reason.get("tests") or [])
        lines.append(f"- {reason['detail']}" + (f": {ids}" if ids else ""))
        for sid, why in (reason.get("justifications") or {}).items():
            lines.append(f"  - {sid}: {why}")
    lines += [
        "",
        "## Run",
        "",
        f"- suite {suite.get('version')} (tinker-std {suite.get('tinker_std_version')}"
        + (f", commit `{commit[:12]}`{' + local changes' if suite.get('git_dirty') else ''}" if commit else "")
        + ")",
        f"- spec {spec.get('version')}, `{spec.get('hash')}` ({spec.get('statements')} statements, "
        f"{spec.get('must')} MUST)",
        f"- provider: `{provider.get('spec')}` -> `{data.get('backend_class')}`, package "
        f"`{provider.get('package')}` {provider.get('version') or ''}".rstrip(),
        f"- base model `{data.get('base_model')}`, tolerance class `{data.get('tolerance_class')}`, "
        f"declared optional capabilities: {caps}",
        f"- environment: Python {env.get('python')}, torch {env.get('torch')}, {env.get('device')}, "
        f"{env.get('platform')}",
        f"- Hypothesis: {hyp.get('max_examples')} examples per property, seed {hyp.get('seed') or 'random'}",
        f"- statements: {_counts(data.get('summary') or {})}",
        f"- tests: {_counts(data.get('test_counts') or {})}"
        + ("" if (data.get("run") or {}).get("complete", True) else " (a selection of the suite)"),
    ]
    by_origin = data.get("summary_by_origin") or {}
    if by_origin:
        lines.append(
            "- differs from Tinker semantics: "
            + str((by_origin.get("tinker") or {}).get("fail", 0))
            + " failed; differs from tinker-std additions: "
            + str((by_origin.get("tinker-std") or {}).get("fail", 0))
            + " failed"
        )
    skip_file = data.get("skip_file")
    if skip_file:
        lines += ["", f"## Known failures (skip file `{skip_file.get('path')}`)", ""]
        for entry in skip_file.get("entries") or []:
            matched = "" if entry.get("matched") else " (matches no test)"
            lines.append(f"- `{entry['entry']}`{matched}: {entry.get('reason') or 'no reason given'}")
    statements = data.get("statements") or {}
    header = ["", "| Statement | Level | Origin | Result | Tests | Notes |", "|---|---|---|---|---|---|"]

    def row(sid: str, entry: Mapping[str, Any]) -> str:
        level = entry.get("level") or "?"
        if entry.get("capability"):
            level += f" (`{entry['capability']}`)"
        note = _cell("; ".join(entry.get("messages") or []))
        tests = len(entry.get("tests") or [])
        return f"| {sid} | {level} | {entry.get('origin') or '?'} | {entry['result']} | {tests} | {note} |"

    open_items = [
        (sid, e)
        for sid, e in statements.items()
        if e["result"] not in ("pass", "not-applicable") and (e["result"] != "not-run" or e.get("tests"))
    ]
    open_items.sort(key=lambda item: RESULTS.index(item[1]["result"]) if item[1]["result"] in RESULTS else 0)
    not_run = [sid for sid, e in statements.items() if e["result"] == "not-run" and not e.get("tests")]
    lines += ["", "## Statements that did not pass", ""]
    lines += [*header[1:], *(row(sid, e) for sid, e in open_items)] if open_items else ["None."]
    if not_run:
        lines += ["", f"Not run ({len(not_run)}: no test citing them ran): {_ids(not_run)}"]
    lines += ["", "<details><summary>Every statement</summary>", "", *header[1:]]
    lines += [row(sid, e) for sid, e in statements.items()]
    lines += ["", "</details>", "", "## Verdict rules", ""]
    lines += [f"{i}. {rule}" for i, rule in enumerate(verdict.get("rules") or [], start=1)]
    return "\n".join(lines) + "\n"


def format_table(data: Mapping[str, Any]) -> str:
    """Plain text: one row per statement a test cited (or whose result is not ``not-run``), the
    statements that no test checked, the counts and the verdict."""
    statements = data.get("statements") or {}
    rows = [("statement", "level", "origin", "result", "tests")]
    for sid, entry in statements.items():
        if entry.get("tests") or entry["result"] != "not-run":
            rows.append(
                (sid, str(entry.get("level") or "?"), str(entry.get("origin") or "?"), entry["result"],
                 str(len(entry.get("tests") or [])))
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    not_run = [sid for sid, e in statements.items() if e["result"] == "not-run" and not e.get("tests")]
    if not_run:
        lines.append(f"not run ({len(not_run)}): " + ", ".join(not_run))
    lines += [
        "",
        f"backend {data.get('backend')} (tolerance {data.get('tolerance_class')}), spec {data.get('spec_version')}: "
        + _counts(data.get("summary") or {}),
        str((data.get("verdict") or {}).get("text", "")),
    ]
    return "\n".join(lines)
