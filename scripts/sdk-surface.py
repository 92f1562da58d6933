#!/usr/bin/env python3
"""Count and list the tinker SDK 0.38 surface tinker-std supports, in process and over the server.

Prints the counts for the README. ``--write`` renders the tables into docs/server.md between the
``sdk-surface`` markers; ``--check`` exits 1 when docs/server.md is not what ``--write`` would make.
Items: every field of every SDK request type (``tinker_std.sdk_surface.FIELDS``, which
``tests/test_sdk_surface_fields.py`` checks against the SDK and a running server) and every
public method of the SDK's ``ServiceClient``, ``TrainingClient``, ``SamplingClient`` and
``RestClient`` (``*_async`` twins counted with their method). A method is supported in process
when ``tinker_std``'s class of the same name has it.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tinker  # noqa: E402

import tinker_std  # noqa: E402
from tinker_std.sdk_surface import CLIENT_LOCAL_METHODS, FIELDS, SERVER_REFUSED_METHODS  # noqa: E402

DOC = ROOT / "docs" / "server.md"
BEGIN, END = "<!-- sdk-surface:begin (scripts/sdk-surface.py --write) -->", "<!-- sdk-surface:end -->"
CLASSES = ("ServiceClient", "TrainingClient", "SamplingClient", "RestClient")


def methods() -> list[tuple[str, str, bool]]:
    """(Class.method, server status, in process?) for every public SDK client method."""
    rows = []
    for cls_name in CLASSES:
        sdk_cls, ours = getattr(tinker, cls_name), getattr(tinker_std, cls_name)
        for name, _ in inspect.getmembers(sdk_cls, callable):
            if name.startswith("_") or name.endswith("_async"):
                continue
            key = f"{cls_name}.{name}"
            server = (
                "client-local"
                if key in CLIENT_LOCAL_METHODS
                else "refused"
                if key in SERVER_REFUSED_METHODS
                else "served"
            )
            rows.append((key, server, hasattr(ours, name)))
    return rows


def counts() -> str:
    fields = Counter(rule.status for rule in FIELDS.values())
    rows = methods()
    served = sum(1 for _, s, _ in rows if s == "served")
    in_process = sum(1 for *_, p in rows if p)
    return (
        f"SDK 0.38 request fields: {len(FIELDS)} ({fields['effect']} with their effect, {fields['refused']} refused "
        f"by name, {fields['fixed']} type tags, {fields['descriptive']} descriptive; 0 silently ignored). "
        f"Client methods: {len(rows)}; over the server {served} served, "
        f"{sum(1 for _, s, _ in rows if s == 'refused')} refused, "
        f"{sum(1 for _, s, _ in rows if s == 'client-local')} client-local; in process {in_process}."
    )


def render() -> str:
    lines = [
        BEGIN,
        "",
        counts(),
        "",
        "| SDK 0.38 request field | rule | what it does, or why refused | spec |",
        "| --- | --- | --- | --- |",
    ]
    for key, rule in sorted(FIELDS.items()):
        lines.append(f"| `{key}` | {rule.status} | {rule.why} | {rule.spec} |")
    lines += ["", "| SDK 0.38 client method | server | in process (`tinker_std`) |", "| --- | --- | --- |"]
    for key, server, ours in methods():
        why = f" ({SERVER_REFUSED_METHODS[key]})" if key in SERVER_REFUSED_METHODS else ""
        lines.append(f"| `{key}` | {server}{why} | {'yes' if ours else 'no'} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="render the tables into docs/server.md")
    parser.add_argument("--check", action="store_true", help="exit 1 unless docs/server.md is up to date")
    args = parser.parse_args()
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC} has no sdk-surface markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = head + render() + tail
    if args.check:
        if updated != text:
            print("docs/server.md is out of date: run python scripts/sdk-surface.py --write", file=sys.stderr)
            return 1
        return 0
    if args.write:
        DOC.write_text(updated)
    print(counts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
