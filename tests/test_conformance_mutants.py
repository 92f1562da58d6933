"""The conformance suite catches broken backends: mutants of the mock (``conformance_mutants.py``)
must fail it, on the statements they break, and the unmutated mock must pass the same selection.

Each run is a subprocess over a small selection of conformance tests (the ones that exercise the
broken behaviour); the six runs start together, as many at a time as there are CPUs.
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conformance_mutants import run_suite

#: The conformance tests every run executes (``--pyargs`` targets).
SELECTION = [
    "tinker_std.conformance.test_losses::test_loss_sum_is_the_formula_of_the_returned_logprobs[cross_entropy]",
    "tinker_std.conformance.test_losses::test_a_duplicated_datum_doubles_its_contribution[cross_entropy]",
    "tinker_std.conformance.test_losses::test_a_duplicated_datum_doubles_its_gradient",
    "tinker_std.conformance.test_training::test_gradients_accumulate_by_summation",
    "tinker_std.conformance.test_training::test_optim_step_consumes_the_gradient",
    "tinker_std.conformance.test_checkpoints::test_resuming_with_optimizer_reproduces_the_run",
    "tinker_std.conformance.test_sampling::test_a_snapshot_sampler_does_not_move",
]
#: Five examples per property test and no shrinking: a mutant only has to be caught, not minimised.
EXTRA = ("--tinker-max-examples", "5", "-p", "conformance_mutants", "--hypothesis-profile", "no-shrink")

#: mutant -> (statements the report must mark failed, statement ids the failure messages must cite
#: as ``[ID]``). The suite's assertions name the statement they check, which is not always the one
#: the mutant breaks: a mean instead of a sum (LOSS-1) shows up as a wrong ``loss:sum`` (FB-2) and
#: a duplicated datum that does not double its contribution (FB-6).
MUTANTS: dict[str, tuple[set[str], set[str]]] = {  # a failure counts against the ids its message names
    "MeanLossMock": ({"FB-2", "FB-6"}, {"FB-2", "FB-6"}),
    "NoAccumulationMock": ({"FB-4"}, {"FB-4"}),
    "LazyGradientMock": ({"FB-3", "FB-5"}, {"FB-3", "FB-5"}),
    "ForgetfulOptimizerMock": ({"CKPT-5"}, {"CKPT-5"}),
    "LiveSamplerMock": ({"ORD-13"}, {"ORD-13"}),
}
TAG = re.compile(r"\[([A-Z]+-\d+)\]")


Run = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """backend -> its run over ``SELECTION``: the mock, and every mutant."""
    backends = ["mock", *(f"conformance_mutants:{name}" for name in sorted(MUTANTS))]

    def run(backend: str) -> Run:
        return run_suite(backend, tmp_path_factory.mktemp(backend.rsplit(":")[-1]), SELECTION, *EXTRA)

    with ThreadPoolExecutor(max_workers=min(len(backends), os.cpu_count() or 1)) as pool:
        return dict(zip(backends, pool.map(run, backends), strict=True))


def _failed(report: dict[str, object]) -> dict[str, list[str]]:
    statements = report.get("statements")
    assert isinstance(statements, dict), f"no statements in the report: {report}"
    return {sid: entry["messages"] for sid, entry in statements.items() if entry["result"] == "fail"}


def test_the_unmutated_mock_passes_the_selection(runs: dict[str, Run]) -> None:
    proc, report = runs["mock"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert not _failed(report)
    covered = {sid for _, (failed, _) in MUTANTS.items() for sid in failed}
    results = {sid: report["statements"][sid]["result"] for sid in covered}
    assert set(results.values()) == {"pass"}, results


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_suite_catches_the_mutant(mutant: str, runs: dict[str, Run]) -> None:
    expected, tags = MUTANTS[mutant]
    proc, report = runs[f"conformance_mutants:{mutant}"]
    assert proc.returncode == 1, f"the suite passed {mutant}:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    assert report.get("backend_class") == f"conformance_mutants:{mutant}"
    failed = _failed(report)
    assert expected <= set(failed), f"{mutant}: expected {sorted(expected)} to fail, failed: {sorted(failed)}"
    for sid in expected:
        cited = {tag for message in failed[sid] for tag in TAG.findall(message)}
        assert cited & tags, f"{mutant}: the failure messages of {sid} cite {sorted(cited)}, none of {sorted(tags)}"
        if sid in tags:
            assert sid in cited, f"{mutant}: no failure message of {sid} cites [{sid}]: {failed[sid]}"
    assert all(f"[{tag}]" in proc.stdout for tag in tags), f"{mutant}: pytest output lacks {sorted(tags)}"
