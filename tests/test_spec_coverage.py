"""The spec and the conformance suite stay linked (issue: every MUST has a test citing it).

Statement ids are parsed from ``spec/*.md``; the ids a conformance test checks are read from the
``@pytest.mark.spec(...)`` markers of the imported test functions.
"""

from __future__ import annotations

import importlib
import re
from collections import defaultdict
from pathlib import Path

from tinker_std.conformance.spec_index import load_statements

ROOT = Path(__file__).resolve().parents[1]


def cited_ids() -> dict[str, list[str]]:
    """statement id -> the conformance tests (module::function) whose ``spec`` markers cite it."""
    cited: dict[str, list[str]] = defaultdict(list)
    for file in sorted((ROOT / "conformance").glob("test_*.py")):
        module = importlib.import_module(f"tinker_std.conformance.{file.stem}")
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not callable(fn):
                continue
            marks = list(getattr(fn, "pytestmark", []))
            for mark in list(marks):  # marks attached to single parameters count for their test too
                if mark.name == "parametrize":
                    marks += [m for value in mark.args[1] for m in getattr(value, "marks", ())]
            for mark in (m for m in marks if m.name == "spec"):
                for sid in mark.args:
                    cited[str(sid)].append(f"{file.name}::{name}")
    return cited


def test_every_must_statement_has_a_conformance_test() -> None:
    statements = load_statements(ROOT / "spec")
    assert len(statements) > 100
    cited = cited_ids()
    missing = sorted(sid for sid, st in statements.items() if st.level == "MUST" and sid not in cited)
    assert not missing, f"MUST statements no conformance test cites: {missing}"


def test_every_capability_statement_has_a_test_too() -> None:
    statements = load_statements(ROOT / "spec")
    cited = cited_ids()
    missing = sorted(sid for sid, st in statements.items() if st.capability and sid not in cited)
    assert not missing, f"capability statements without a test: {missing}"


def test_no_test_cites_an_unknown_statement() -> None:
    known = set(load_statements(ROOT / "spec"))
    unknown = {sid: tests for sid, tests in cited_ids().items() if sid not in known}
    assert not unknown, f"tests cite ids the spec does not define: {unknown}"


def test_statement_ids_are_unique_and_contiguous_per_prefix() -> None:
    ids: list[str] = []
    for file in sorted((ROOT / "spec").glob("*.md")):
        ids += re.findall(r"^- \*\*([A-Z]+-\d+)\*\* \[", file.read_text(), flags=re.M)
    assert len(ids) == len(set(ids)), "duplicate statement ids"
    by_prefix: dict[str, list[int]] = defaultdict(list)
    for sid in ids:
        prefix, number = sid.rsplit("-", 1)
        by_prefix[prefix].append(int(number))
    for prefix, numbers in by_prefix.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), f"{prefix} ids are not 1..n: {sorted(numbers)}"
