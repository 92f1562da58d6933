"""Mutation test of the conformance suite (issue 19, deliverable 3).

Every mutant of ``tests/mutants/`` (a broken provider, one MUST statement broken each) must fail
its selection of conformance tests, with the report marking its statement ``fail``; each distinct
unmutated base backend must pass the union of the selections. Every MUST statement of the spec has
a mutant or a written exemption in ``tests/mutants/EXEMPT``.

Each run is a process of its own over a few conformance tests with three Hypothesis examples and no
shrinking, forked from a server that has imported torch and the suite once
(``mutants._forkserver``); the runs of a session start together in a pool of ``os.cpu_count()``
threads. Mutants
marked ``slow`` run only in the slow tier; the default tier runs the rest. The figures (MUST
statements, with a mutant, killed) are written to ``.ci-reports/mutation.json``
(``python -m tests.mutation_score`` prints them).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mutants import Mutant
from mutants._catalog import all_mutants, coverage, exemptions, must_statements, write_figures
from mutants._forkserver import ForkServer
from mutants._runner import FAST_OPTIONS, run_suite, suite_env

MUTANTS = all_mutants()
BY_BACKEND = {m.backend: m for m in MUTANTS}
BACKEND_RE = re.compile(r"^mutants\.[a-z_][a-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    seconds: float

    def output(self) -> str:
        return self.proc.stdout[-4000:] + self.proc.stderr[-2000:]

    def result(self, statement: str) -> str | None:
        entry = self.report.get("statements", {}).get(statement)
        return None if entry is None else str(entry.get("result"))

    def failed(self) -> list[str]:
        return sorted(s for s, e in self.report.get("statements", {}).items() if e.get("result") == "fail")


def _mutant_param(m: Mutant) -> Any:
    marks = [pytest.mark.slow] if m.slow else []
    return pytest.param(m.backend, id=m.backend.split(":")[-1], marks=marks)


def _selected(session: pytest.Session) -> list[Mutant]:
    """The mutants whose test this session runs (``-m`` and ``-k`` already applied)."""
    chosen = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and item.name.startswith("test_the_suite_catches_the_mutant"):
            chosen.append(BY_BACKEND[callspec.params["mutant"]])
    return chosen


def _killed(mutant: Mutant, run: Run) -> tuple[bool, str]:
    if run.proc.returncode != 1:
        return False, f"exit status {run.proc.returncode} (1 = tests failed)"
    result = run.result(mutant.statement)
    if result != "fail":
        return False, f"{mutant.statement} reported {result!r}; failed: {run.failed()}"
    return True, "killed"


@contextlib.contextmanager
def _fork_server() -> Iterator[ForkServer | None]:
    """A fork server for the runs (``None``, i.e. a fresh interpreter per run, where ``fork`` is
    unavailable or ``TINKER_STD_MUTATION_FORK=0``)."""
    if not hasattr(os, "fork") or os.environ.get("TINKER_STD_MUTATION_FORK") == "0":
        yield None
        return
    server = ForkServer({**os.environ, **suite_env(Path(tempfile.gettempdir()))})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """backend -> its run: every selected mutant over its selection, and each of their base
    backends over the union of their selections."""
    chosen = _selected(request.session)
    jobs: dict[str, tuple[str, tuple[str, ...]]] = {m.backend: (m.backend, m.selection) for m in chosen}
    for base in sorted({m.base for m in chosen}):
        union = sorted({node for m in chosen if m.base == base for node in m.selection})
        jobs[f"base:{base}"] = (base, tuple(union))
    root = tmp_path_factory.mktemp("mutation")

    def run(key: str, server: ForkServer | None) -> tuple[str, Run]:
        backend, selection = jobs[key]
        start = time.monotonic()
        folder = root / re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        proc, report = run_suite(backend, folder, selection, *FAST_OPTIONS, server=server)
        return key, Run(proc, report, time.monotonic() - start)

    start = time.monotonic()
    # the longest selections first, so that the pool does not end on one big run
    order = sorted(jobs, key=lambda k: -len(jobs[k][1]))
    with _fork_server() as server, ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = dict(pool.map(lambda key: run(key, server), order))
    results = {}
    for m in chosen:
        killed, why = _killed(m, done[m.backend])
        results[m.backend] = {
            "statement": m.statement,
            "killed": killed,
            "why": why,
            "failed": done[m.backend].failed(),
            "seconds": round(done[m.backend].seconds, 1),
        }
    figures = write_figures(results)
    print(
        f"\nmutation: {len(jobs)} runs in {time.monotonic() - start:.0f}s; "
        f"MUST statements {figures['must_statements']}, with a mutant {figures['with_mutant']}, "
        f"mutants killed {figures['mutants_killed']}/{figures['mutants_run']} (of {figures['mutants_total']})"
    )
    return done


@pytest.mark.parametrize("mutant", [_mutant_param(m) for m in MUTANTS])
def test_the_suite_catches_the_mutant(mutant: str, runs: dict[str, Run]) -> None:
    m = BY_BACKEND[mutant]
    run = runs[mutant]
    killed, why = _killed(m, run)
    assert killed, f"{mutant} survived ({m.statement}): {why}\n{run.output()}"
    assert run.report.get("backend_class") in (None, mutant), f"the report is of {run.report.get('backend_class')}"


def _bases() -> list[Any]:
    bases = sorted({m.base for m in MUTANTS})
    slow_only = {b for b in bases if all(m.slow for m in MUTANTS if m.base == b)}
    return [pytest.param(b, marks=[pytest.mark.slow] if b in slow_only else []) for b in bases]


@pytest.mark.parametrize("base", _bases())
def test_the_base_backend_passes_the_selections(base: str, runs: dict[str, Run]) -> None:
    run = runs.get(f"base:{base}")
    if run is None:
        pytest.skip(f"no mutant of {base} is selected in this session")
    assert run.proc.returncode == 0, f"base backend {base} fails the mutants' selections:\n{run.output()}"
    assert not run.failed(), f"{base}: statements failed: {run.failed()}"


def test_the_mutant_records_are_well_formed() -> None:
    statements = must_statements()
    assert statements, "no MUST statements found under spec/"
    assert len(BY_BACKEND) == len(MUTANTS), "two mutants share a backend class"
    for m in MUTANTS:
        assert BACKEND_RE.match(m.backend), f"{m.backend}: expected mutants.<module>:<Class>"
        assert re.fullmatch(r"[A-Z]+-\d+", m.statement), f"{m.backend}: statement {m.statement!r}"
        assert m.selection, f"{m.backend}: empty selection"
        for node in m.selection:
            assert node.startswith("tinker_std.conformance.test_"), f"{m.backend}: {node} is not a conformance test"
        assert m.statement not in m.also, f"{m.backend}: its statement is also listed in `also`"


def test_every_must_statement_has_a_mutant_or_a_written_exemption() -> None:
    musts, exempt = must_statements(), exemptions()
    figures = coverage(MUTANTS, musts, exempt)
    unknown = sorted(s for s in exempt if s not in musts)
    assert not unknown, f"tests/mutants/EXEMPT lists statements that are not MUST statements of the spec: {unknown}"
    both = sorted(s for s in exempt if s in figures["statements_with_mutant"])
    assert not both, f"tests/mutants/EXEMPT lists statements that have a mutant (remove them): {both}"
    short = sorted(s for s, why in exempt.items() if len(why.split()) < 4)
    assert not short, f"tests/mutants/EXEMPT: give a reason (a sentence) for {short}"
    print(f"\nMUST statements {figures['must_statements']}, with a mutant {figures['with_mutant']}")
    assert not figures["missing"], (
        f"{len(figures['missing'])} MUST statements have neither a mutant in tests/mutants/ nor an entry in "
        f"tests/mutants/EXEMPT: {figures['missing']}"
    )


def test_the_exemption_file_is_parsed_strictly(tmp_path: Path) -> None:
    good = tmp_path / "EXEMPT"
    good.write_text("# comment\n\nORD-14  It grants a freedom, not a behaviour.\n", encoding="utf-8")
    assert exemptions(good) == {"ORD-14": "It grants a freedom, not a behaviour."}
    for bad in ("ORD-14\n", "ord-14  reason here\n", "ORD-14  a b c d\nORD-14  a b c d\n"):
        good.write_text(bad, encoding="utf-8")
        with pytest.raises(ValueError):
            exemptions(good)
