"""What the mutation harness measures: the mutants of ``tests/mutants/``, the MUST statements of the
spec, the exemptions, and the figures (MUST statements, with a mutant, killed) written to JSON.

Shared by ``tests/test_mutation.py`` (which runs the mutants) and ``python -m tests.mutation_score``
(which prints the figures for the README).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mutants import Mutant

__all__ = [
    "MUTANTS_DIR",
    "REPO",
    "SPEC_DIR",
    "EXEMPT_FILE",
    "REPORT_FILE",
    "statement_key",
    "all_mutants",
    "must_statements",
    "exemptions",
    "coverage",
    "write_figures",
]

MUTANTS_DIR = Path(__file__).resolve().parent
REPO = MUTANTS_DIR.parent.parent
SPEC_DIR = REPO / "spec"
EXEMPT_FILE = MUTANTS_DIR / "EXEMPT"
#: Where the figures go (CI keeps ``.ci-reports/``; ``python -m tests.mutation_score`` reads it).
REPORT_FILE = REPO / ".ci-reports" / "mutation.json"

#: ``- **PREFIX-N** [LEVEL, tags...] text``: the level and the tags (capability, tinker-std, unverified).
_STATEMENT = re.compile(r"^- \*\*([A-Z]+-\d+)\*\* \[(MUST|SHOULD|MAY)([^\]]*)\]")
_EXEMPT_LINE = re.compile(r"^([A-Z]+-\d+)\s+(\S.*)$")


def statement_key(statement: str) -> tuple[str, int]:
    """Sort key: ``FB-2`` before ``FB-10``."""
    prefix, _, number = statement.partition("-")
    return prefix, int(number) if number.isdigit() else 0


def all_mutants() -> list[Mutant]:
    """Every ``MUTANTS`` entry of every public module of ``tests/mutants/``, in module order."""
    found: list[Mutant] = []
    for info in sorted(pkgutil.iter_modules([str(MUTANTS_DIR)]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mutants.{info.name}")
        mutants = getattr(module, "MUTANTS", None)
        if not isinstance(mutants, list) or not all(isinstance(m, Mutant) for m in mutants):
            raise TypeError(f"tests/mutants/{info.name}.py must export MUTANTS: list[Mutant]")
        found.extend(mutants)
    return found


def must_statements(spec_dir: Path = SPEC_DIR) -> dict[str, str]:
    """Every statement of level MUST in the spec: id -> its file name (withdrawn ones excluded)."""
    found: dict[str, str] = {}
    for file in sorted(spec_dir.glob("*.md")):
        for line in file.read_text(encoding="utf-8").splitlines():
            match = _STATEMENT.match(line)
            if match and match.group(2) == "MUST" and "withdrawn" not in line[match.end() :].lower()[:40]:
                found[match.group(1)] = file.name
    return found


def exemptions(path: Path = EXEMPT_FILE) -> dict[str, str]:
    """``tests/mutants/EXEMPT``: MUST statements without a mutant, ``ID  reason`` one per line."""
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXEMPT_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected `ID  reason`, got {raw!r}")
        if match.group(1) in found:
            raise ValueError(f"{path}:{number}: {match.group(1)} is listed twice")
        found[match.group(1)] = match.group(2)
    return found


def coverage(mutants: Iterable[Mutant], musts: Mapping[str, str], exempt: Mapping[str, str]) -> dict[str, Any]:
    """Which MUST statements have a mutant, which are exempt (with reasons), which have neither."""
    targeted = {m.statement for m in mutants}
    with_mutant = sorted((s for s in musts if s in targeted), key=statement_key)
    return {
        "must_statements": len(musts),
        "with_mutant": len(with_mutant),
        "exempt": {s: exempt[s] for s in sorted(exempt, key=statement_key) if s in musts},
        "missing": sorted((s for s in musts if s not in targeted and s not in exempt), key=statement_key),
        "statements_with_mutant": with_mutant,
    }


def write_figures(results: Mapping[str, Mapping[str, Any]], path: Path = REPORT_FILE) -> dict[str, Any]:
    """Merge this run's per-mutant ``results`` (backend -> {statement, killed, why, seconds}) into
    ``path`` (the default and slow tiers each add theirs), recompute the figures and write them.
    Entries of mutants that no longer exist are dropped."""
    mutants = all_mutants()
    current = {m.backend for m in mutants}
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("mutants", {})
        except (ValueError, AttributeError):
            previous = {}
    merged = {k: v for k, v in {**previous, **results}.items() if k in current}
    musts = must_statements()
    figures = coverage(mutants, musts, exemptions())
    killed_statements = sorted({v["statement"] for v in merged.values() if v["killed"]} & set(musts))
    data = {
        **figures,
        "mutants": dict(sorted(merged.items())),
        "mutants_total": len(mutants),
        "mutants_run": len(merged),
        "mutants_killed": sum(1 for v in merged.values() if v["killed"]),
        "statements_killed": len(killed_statements),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data
