"""Print the mutation figures for the README: ``python -m tests.mutation_score [--run] [--json]``.

Without ``--run`` it reads the last run's figures from ``.ci-reports/mutation.json`` (written by
``tests/test_mutation.py``; the default tier adds its mutants, ``-m slow`` the rest); the coverage
figures (MUST statements, with a mutant, exempt) are recomputed from ``spec/`` and
``tests/mutants/`` either way. ``--run`` first runs the whole mutation test (both tiers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from mutants._catalog import REPO, REPORT_FILE, all_mutants, coverage, exemptions, must_statements  # noqa: E402


def figures() -> dict[str, Any]:
    """Coverage from the sources, kill counts from the last run (``None`` when there was none)."""
    mutants = all_mutants()
    musts = must_statements()
    data = coverage(mutants, musts, exemptions())
    data["mutants_total"] = len(mutants)
    run: dict[str, Any] = json.loads(REPORT_FILE.read_text(encoding="utf-8")) if REPORT_FILE.is_file() else {}
    results = {k: v for k, v in run.get("mutants", {}).items() if k in {m.backend for m in mutants}}
    data["mutants_run"] = len(results)
    data["mutants_killed"] = sum(1 for v in results.values() if v["killed"])
    data["survivors"] = sorted(f"{k} ({v['statement']}): {v['why']}" for k, v in results.items() if not v["killed"])
    data["statements_killed"] = len({v["statement"] for v in results.values() if v["killed"]} & set(musts))
    return data


def sentence(data: dict[str, Any]) -> str:
    """The README's sentence."""
    run, killed = data["mutants_run"], data["mutants_killed"]
    rate = f"{100 * killed / run:.0f}%" if run else "n/a"
    return (
        f"{data['with_mutant']} of the spec's {data['must_statements']} MUST statements have a mutant "
        f"({len(data['exempt'])} exempt with a written reason); the suite kills {killed} of "
        f"{run} mutants run ({rate})."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation_score", description=__doc__)
    parser.add_argument("--run", action="store_true", help="run tests/test_mutation.py (both tiers) first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.run:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", "tests/test_mutation.py"]
        subprocess.run(command, cwd=REPO, check=False)
    data = figures()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(sentence(data))
        if data["missing"]:
            print(f"without a mutant or exemption: {', '.join(data['missing'])}")
        for line in data["survivors"]:
            print(f"survived: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
