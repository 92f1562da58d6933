"""Conformance certificates: a folder holding ``report.json``, ``summary.md``, ``badge.svg`` and
``digest`` (``tinker-std conformance --backend X --certify OUTDIR`` writes one).

``digest`` holds ``sha256:<hex>``: the sha256 of the report's canonical form, which anyone can
recompute::

    python -m tinker_std.conformance.certificate verify OUTDIR     # digest, summary and badge match
    python -m tinker_std.conformance.certificate digest OUTDIR/report.json

The canonical form is the report without the fields that change from machine to machine or run
to run (``VOLATILE``: the environment, git commit, command line, skip-file path and test
durations), serialized as ``json.dumps(data, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` and UTF-8 encoded. So the digest certifies the results, the spec text (by
its hash), the suite version, the provider and its declaration, not the machine; two runs of the
same suite on the same provider and spec give the same digest, which is how CI checks that the
committed certificates of our own backends are current (``compare``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .summary import render_markdown

__all__ = ["VOLATILE", "canonical", "digest", "render_badge", "write_certificate", "verify", "compare", "main"]

FILES = ("report.json", "summary.md", "badge.svg", "digest")
#: Dotted paths left out of the canonical form (``tests.*`` applies to every test entry).
VOLATILE = (
    "environment",
    "suite.git_commit",
    "suite.git_dirty",
    "run.args",
    "skip_file.path",
    "tests.*.duration_s",
)


def _drop(node: Any, path: list[str]) -> None:
    if not path or node is None:
        return
    head, rest = path[0], path[1:]
    if head == "*" and isinstance(node, list):
        for child in node:
            _drop(child, rest)
    elif isinstance(node, dict) and head in node:
        if rest:
            _drop(node[head], rest)
        else:
            del node[head]


def canonical(report: Mapping[str, Any]) -> bytes:
    """The canonical form of ``report`` (module docstring)."""
    data = copy.deepcopy(dict(report))
    for dotted in VOLATILE:
        _drop(data, dotted.split("."))
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def digest(report: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of ``canonical(report)``."""
    return "sha256:" + hashlib.sha256(canonical(report)).hexdigest()


def _passed(report: Mapping[str, Any]) -> tuple[int, int]:
    """(passed, required) statements: what the badge counts."""
    reasons = (report.get("verdict") or {}).get("reasons") or []
    open_ids = {sid for r in reasons for sid in r.get("statements") or []}
    statements = report.get("statements") or {}
    declared = set(report.get("capabilities") or [])
    required = [
        sid
        for sid, e in statements.items()
        if (e.get("capability") in declared if e.get("capability") else e.get("level") == "MUST")
    ]
    return sum(1 for sid in required if sid not in open_ids), len(required)


def render_badge(report: Mapping[str, Any]) -> str:
    """A flat SVG badge: ``tinker-std <spec>`` | ``conformant N/M`` (green) or ``not conformant N/M``."""
    conformant = bool((report.get("verdict") or {}).get("conformant"))
    passed, required = _passed(report)
    left = f"tinker-std {report.get('spec_version')}"
    right = f"{'conformant' if conformant else 'not conformant'} {passed}/{required} MUST"
    colour = "#2e7d32" if conformant else "#c62828"
    lw, rw = 7 * len(left) + 12, 7 * len(right) + 12
    width = lw + rw
    label = escape(f"{left}: {right}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="{label}">'
        f"<title>{label}</title>"
        f'<rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{colour}"/>'
        f'<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">'
        f'<text x="{lw / 2}" y="14">{escape(left)}</text><text x="{lw + rw / 2}" y="14">{escape(right)}</text>'
        "</g></svg>\n"
    )


def write_certificate(outdir: Path) -> str:
    """Complete the certificate in ``outdir`` from its ``report.json``: write ``summary.md``,
    ``badge.svg`` and ``digest`` (and drop the ``report.md`` the run wrote next to the JSON).
    Returns the digest."""
    report = json.loads((outdir / "report.json").read_text(encoding="utf-8"))
    (outdir / "summary.md").write_text(render_markdown(report), encoding="utf-8")
    (outdir / "badge.svg").write_text(render_badge(report), encoding="utf-8")
    value = digest(report)
    (outdir / "digest").write_text(value + "\n", encoding="utf-8")
    (outdir / "report.md").unlink(missing_ok=True)
    return value


def verify(outdir: Path) -> list[str]:
    """Problems with the certificate in ``outdir`` (empty: it is intact): a missing file, a digest
    that does not recompute, a summary or badge that does not render from the report."""
    missing = [name for name in FILES if not (outdir / name).is_file()]
    if missing:
        return [f"{outdir}: missing {', '.join(missing)}"]
    try:
        report = json.loads((outdir / "report.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"{outdir}/report.json: not JSON: {exc}"]
    problems = []
    recorded = (outdir / "digest").read_text(encoding="utf-8").strip()
    if recorded != digest(report):
        problems.append(f"{outdir}/digest: {recorded} but report.json gives {digest(report)}")
    if (outdir / "summary.md").read_text(encoding="utf-8") != render_markdown(report):
        problems.append(f"{outdir}/summary.md: does not match report.json")
    if (outdir / "badge.svg").read_text(encoding="utf-8") != render_badge(report):
        problems.append(f"{outdir}/badge.svg: does not match report.json")
    return problems


def compare(fresh: Path, committed: Path) -> list[str]:
    """Differences between a fresh certificate and a committed one, by digest; on a mismatch, the
    statements whose result differs (or the top-level keys that differ)."""
    problems = verify(committed)
    if problems:
        return problems
    new = json.loads((fresh / "report.json").read_text(encoding="utf-8"))
    old = json.loads((committed / "report.json").read_text(encoding="utf-8"))
    if digest(new) == digest(old):
        return []
    changed = [
        f"{sid}: {old['statements'].get(sid, {}).get('result')} -> {entry['result']}"
        for sid, entry in new["statements"].items()
        if old["statements"].get(sid, {}).get("result") != entry["result"]
    ]
    keys = sorted(k for k in set(new) | set(old) if canonical({k: new.get(k)}) != canonical({k: old.get(k)}))
    return [f"{committed} is stale (differs in {', '.join(keys)})", *changed[:20]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinker_std.conformance.certificate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="check a certificate folder").add_argument("folders", nargs="+", type=Path)
    sub.add_parser("digest", help="print the digest of a report.json").add_argument("report", type=Path)
    sub.add_parser("write", help="write summary, badge and digest from report.json").add_argument("folder", type=Path)
    cmp = sub.add_parser("compare", help="check a committed certificate against a fresh one")
    cmp.add_argument("fresh", type=Path)
    cmp.add_argument("committed", type=Path)
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(digest(json.loads(args.report.read_text(encoding="utf-8"))))
        return 0
    if args.command == "write":
        print(write_certificate(args.folder))
        return 0
    problems = verify_all(args.folders) if args.command == "verify" else compare(args.fresh, args.committed)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("ok")
    return 1 if problems else 0


def verify_all(folders: Sequence[Path]) -> list[str]:
    return [problem for folder in folders for problem in verify(folder)]


if __name__ == "__main__":
    sys.exit(main())
