"""Running the suite against a server we did not write, as a provider of one would: conformance
tests through the ``tinker`` backend (the official SDK over HTTP) against a peer server, declared by
a ``--backend-config`` file (docs/server.md, "The tinker backend").

The peer is a tinker-std server (served on 127.0.0.1 by the suite's process) whose engine is broken
in one way: it reports ``loss:sum`` as a mean over the call's tokens instead of a sum (LOSS-1). The
same conformance tests run against an unbroken peer (the plain mock) must pass, so whatever fails on
the broken one is its bug, not the HTTP path. The report must then blame the broken statement only (failures attributed
by the ``[ID]`` their messages name), keep the statements merely cited by a failing test
``inconclusive`` rather than failed, show undeclared capabilities as not declared, and stay short
enough to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tinker_std.backends.mock import MockBackend
from tinker_std.types import Datum, ForwardBackwardOutput

pytest.importorskip("tinker")

#: What the peers are declared to support (a provider writes this in its --backend-config file).
DECLARED = ["loss:cispo", "loss:dro", "loss:gspo", "soft_targets"]
#: The conformance tests run (``--pyargs`` targets and ``-k``): loss tests the broken peer gets wrong
#: and loss tests it gets right (alignment, metric names), small enough for the default tier.
SELECTION = ["tinker_std.conformance.test_losses"]
KEYWORDS = (
    "test_loss_sum_is_the_formula_of_the_returned_logprobs or test_a_duplicated_datum_doubles_its_contribution"
    " or test_a_positions_logprob_ignores_later_tokens or test_metric_keys_are_name_colon_reduction"
)
#: The statement the peer breaks (the reduction is a sum), and the ones its bug also fails, because
#: their tests check them through ``loss:sum``: a duplicated datum no longer doubles its contribution
#: (FB-6), and ``loss:sum`` is not the formula of the returned logprobs (FB-2).
BROKEN = {"LOSS-1"}
ALSO = {"FB-2", "FB-6"}


class MeanLossPeer(MockBackend):
    """The mock, except that ``loss:sum`` is divided by the call's token count (LOSS-1 broken)."""

    name: ClassVar[str] = "peer-mean-loss"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        tokens = sum(d.model_input.length for d in data)
        return out.model_copy(update={"metrics": {**out.metrics, "loss:sum": out.metrics["loss:sum"] / tokens}})


@pytest.fixture(scope="module")
def peers() -> dict[str, dict[str, Any]]:
    """name -> the ``--backend-config`` of a peer: ``good`` (the mock), ``broken`` (``MeanLossPeer``),
    each served by the suite's process on 127.0.0.1 (``serve=module:Class``: a tinker-std server
    over that engine, reached through the SDK over HTTP; the mock's tokenizer is not a Hugging Face
    one, so the client side takes it from the served engine)."""
    here = Path(__file__).stem
    return {
        name: {"serve": target, "capabilities": DECLARED, "tolerance": "mock"}
        for name, target in (("good", "tinker_std.backends.mock:MockBackend"), ("broken", f"{here}:MeanLossPeer"))
    }


def _run(config: dict[str, Any], folder: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``tinker-std conformance --backend tinker --backend-config FILE --report ...`` over ``SELECTION``."""
    (folder / "peer.json").write_text(json.dumps(config), encoding="utf-8")
    report = folder / "report.json"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", *SELECTION,
        "--tinker-backend", "tinker", "--tinker-backend-config", str(folder / "peer.json"),
        "--tinker-report", str(report), "--tinker-max-examples", "3", "-k", KEYWORDS,
    ]  # fmt: skip
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TINKER_TELEMETRY": "0"}
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900, check=False)
    return proc, json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}


@pytest.mark.slow  # two suite runs through the SDK over HTTP: about a minute on 2 idle cores
def test_a_broken_peer_is_blamed_for_its_one_bug_and_the_report_stays_readable(
    peers: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "broken").mkdir()
    good_proc, good = _run(peers["good"], tmp_path / "good")
    assert good_proc.returncode == 0, good_proc.stdout[-4000:] + good_proc.stderr[-2000:]
    assert good["backend"] == "tinker" and good["capabilities"] == sorted(DECLARED)
    assert not [sid for sid, e in good["statements"].items() if e["result"] == "fail"]

    proc, report = _run(peers["broken"], tmp_path / "broken")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    statements = report["statements"]
    failed = {sid for sid, e in statements.items() if e["result"] == "fail"}
    assert BROKEN <= failed <= BROKEN | ALSO, failed
    failing_tests = [t for t in report["tests"] if t["outcome"] == "failed"]
    assert failing_tests and all(t["attribution"] == "message" for t in failing_tests), failing_tests
    for sid in failed:  # each failed statement is named by a failing test's message
        assert statements[sid]["failed_tests"], statements[sid]
    for test in failing_tests:  # what a failing test cites but its message does not name is not blamed by it
        for sid in set(test["statements"]) - set(test["attributed"]):
            assert test["nodeid"] not in statements[sid]["failed_tests"]
            assert statements[sid]["result"] == "inconclusive" or sid in failed, (sid, statements[sid])
    assert statements["LOSS-1"]["failed_tests"] and statements["LOSS-1"]["origin"] == "tinker"
    # Capabilities the peer was not declared to have are "not declared", never failures.
    not_declared = {sid for sid, e in statements.items() if e["result"] == "skipped-not-declared"}
    assert {sid for sid, e in statements.items() if e["capability"] == "topk_prompt_logprobs"} <= not_declared
    # Readable: a verdict that names the broken statement, and a short list of what did not pass.
    verdict = report["verdict"]
    assert not verdict["conformant"] and "required statements failed" in verdict["text"]
    assert set(next(r for r in verdict["reasons"] if r["kind"] == "fail")["statements"]) == failed
    assert report["summary_by_origin"]["tinker"]["fail"] == len(failed)
    summary = (tmp_path / "broken" / "report.md").read_text(encoding="utf-8")
    assert "**Not conformant.**" in summary and "| LOSS-1 | MUST | tinker | fail |" in summary
    assert len(failed) <= 3  # the old report failed every id a failing test cited: 12 for this bug
    assert {t["nodeid"] for t in good["tests"]} == {t["nodeid"] for t in report["tests"]}  # the same tests
