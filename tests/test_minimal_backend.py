"""The one-file ``minimal`` backend passes the conformance suite, skipping exactly the statements of
the capabilities it leaves undeclared; and the suite's ``--tinker-skip-file`` option works."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinker_std as ts
from tinker_std.backends import minimal
from tinker_std.backends.minimal import MODEL_NAME, MinimalBackend
from tinker_std.capabilities import OPTIONAL_CAPABILITIES
from tinker_std.conformance.plugin import read_skip_file, skip_entry_matches
from tinker_std.registry import load_backend_class

from mutants._runner import run_suite


def test_the_whole_suite_passes_with_undeclared_statements_skipped(tmp_path: Path) -> None:
    """Every test passes or is skipped for a capability ``minimal`` does not declare; the statements of
    those capabilities read ``skipped-not-declared``, and a MUST statement whose tests all need one
    reads ``skipped`` (CAP-1: declaring less never makes it pass), so the verdict names it."""
    proc, report = run_suite("minimal", tmp_path, ["tinker_std.conformance"])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert report["backend"] == "minimal" and report["tolerance_class"] == "fp32"
    assert report["backend_class"] == "tinker_std.backends.minimal:MinimalBackend"
    undeclared = OPTIONAL_CAPABILITIES - set(report["capabilities"])
    assert undeclared == OPTIONAL_CAPABILITIES - MinimalBackend.capabilities.optional
    assert {"introspection", "deterministic", "seeded_sampling", "topk_prompt_logprobs"} <= undeclared
    statements = report["statements"]
    results = {sid: entry["result"] for sid, entry in statements.items()}
    assert not [sid for sid, result in results.items() if result == "fail"]
    not_declared = {sid for sid, e in statements.items() if e["capability"] in undeclared}
    assert {sid for sid, result in results.items() if result == "skipped-not-declared"} == not_declared
    for sid, result in results.items():
        assert result in ("pass", "not-applicable", "skipped-not-declared", "skipped", "not-run", "unverified"), sid
        if result == "skipped":  # only for an undeclared capability, and then it withholds the verdict
            assert all("not declared" in m for m in statements[sid]["messages"]), statements[sid]
            assert statements[sid]["level"] != "MUST" or not report["verdict"]["conformant"]
    assert report["summary"]["pass"] > 100
    assert report["skip_file"] is None and report["run"]["complete"]


def test_the_backend_is_registered_and_works_through_the_client(tmp_path: Path) -> None:
    assert load_backend_class("minimal") is MinimalBackend
    service = ts.ServiceClient("minimal", checkpoint_dir=str(tmp_path))
    try:
        tc = service.create_lora_training_client(MODEL_NAME, rank=4, seed=0).result()
        tokens = tc.get_tokenizer().encode("hello, world")
        datum = ts.Datum(model_input=ts.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})
        losses = []
        for _ in range(5):
            losses.append(tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"])
            tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
        assert losses[-1] < losses[0]
        sampler = tc.save_weights_and_get_sampling_client().result()
        out = sampler.sample(ts.ModelInput.from_ints(tokens[:3]), 2, ts.SamplingParams(max_tokens=5)).result()
        assert [len(s.tokens) <= 5 for s in out.sequences] == [True, True]
        with pytest.raises(ts.Unsupported):
            tc.read_state()
    finally:
        service.close()


def test_the_backend_is_one_file_on_the_public_api() -> None:
    """A third party can copy it: it imports only torch, the standard library and tinker_std's
    public modules, and nothing of the mock backend."""
    path = Path(minimal.__file__ or "")
    allowed = {"tinker_std.backend", "tinker_std.capabilities", "tinker_std.checkpoints", "tinker_std.training_math"}
    allowed |= {"tinker_std.errors", "tinker_std.sampling_rules", "tinker_std.types", "torch", "__future__"}
    stdlib = {"functools", "math", "secrets", "uuid", "collections.abc", "dataclasses", "pathlib", "typing"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module in allowed | stdlib, f"import from {node.module}"
        elif isinstance(node, ast.Import):
            assert all(alias.name in allowed | stdlib for alias in node.names), ast.dump(node)


# -- --tinker-skip-file -----------------------------------------------------------------------------


def test_skip_entries_match_node_ids_prefixes_and_statements(tmp_path: Path) -> None:
    node = "conformance/test_sampling.py::test_x[a-1]"
    for entry in (
        "test_sampling.py::test_x[a-1]",
        "test_sampling.py::test_x",
        "test_sampling.py::test_x[",
        "test_sampling.py",
        "conformance/test_sampling.py::test_x",
        "conformance/",
        "test_sampling.py::",
        "SMP-3",
    ):
        assert skip_entry_matches(entry, node, ["SMP-2", "SMP-3"]), entry
    for entry in ("test_sampling.py::test_", "test_sampling.py::test_x[a", "ampling.py", "SMP-4", "test_x"):
        assert not skip_entry_matches(entry, node, ["SMP-2", "SMP-3"]), entry
    # a node id without its file part (pytest does that for a file given as a --pyargs target)
    assert skip_entry_matches("test_sampling.py::test_x", "::test_x[a-1]", [], "/site/conformance/test_sampling.py")
    assert not skip_entry_matches("test_errors.py::test_x", "::test_x[a-1]", [], "/site/conformance/test_sampling.py")
    file = tmp_path / "skip.txt"
    file.write_text("# header\n\nSMP-3   # trailing comment\n  test_a.py::test_b  \nSMP-3\n")
    assert read_skip_file(str(file)) == {"SMP-3": 3, "test_a.py::test_b": 4}


def test_a_skip_file_skips_tests_reports_them_and_warns_about_strays(tmp_path: Path) -> None:
    skip_file = tmp_path / "skip.txt"
    skip_file.write_text(
        "# known problems of this backend\n"
        "SMP-14                 # a statement id: every test citing it\n"
        "test_errors.py::test_the_backend_refuses_what_it_does_not_declare   # all its parameters\n"
        "SMP-12                 # not declared anyway: stays skipped-not-declared\n"
        "NOPE-1\n"
        "test_nothing.py::test_x\n"
        "test_sampling.py::test_a_snapshot   # not at a boundary: matches nothing\n"
    )
    selection = [
        "tinker_std.conformance.test_sampling::test_a_snapshot_sampler_does_not_move",
        "tinker_std.conformance.test_sampling::test_seeded_sampling_is_reproducible_per_sequence",
        "tinker_std.conformance.test_sampling::test_max_tokens_defaults_to_the_rest_of_the_context",
        "tinker_std.conformance.test_errors::test_the_backend_refuses_what_it_does_not_declare",
    ]
    proc, report = run_suite("minimal", tmp_path, selection, "--tinker-skip-file", str(skip_file), "-rs")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    refuses = "test_errors.py::test_the_backend_refuses_what_it_does_not_declare"
    unmatched = ["NOPE-1", "test_nothing.py::test_x", "test_sampling.py::test_a_snapshot"]
    entries = report["skip_file"]["entries"]
    assert report["skip_file"]["path"] == str(skip_file) and report["skip_file"]["unmatched"] == unmatched
    assert [e["entry"] for e in entries] == ["SMP-14", refuses, "SMP-12", *unmatched]
    reason = "a statement id: every test citing it"
    assert entries[0] == {"entry": "SMP-14", "line": 2, "reason": reason, "matched": True}
    assert entries[3]["reason"] == "" and not entries[3]["matched"]
    results = {sid: entry["result"] for sid, entry in report["statements"].items()}
    assert results["SMP-14"] == results["ORD-13"] == "known-failure"
    assert results["CAP-4"] == results["ERR-1"] == "known-failure"
    assert results["SMP-12"] == "skipped-not-declared"
    assert results["SMP-2"] == "pass"
    assert report["summary"]["known-failure"] == 4
    counts = {k: v for k, v in report["test_counts"].items() if v}
    assert set(counts) == {"known-failure", "not-declared", "passed"}
    assert counts["passed"] == counts["not-declared"] == 1
    assert counts["known-failure"] >= 7  # SMP-14's test, and the refusal test for every optional capability
    known = next(r for r in report["verdict"]["reasons"] if r["kind"] == "known-failure")
    assert known["justifications"]["SMP-14"] == "listed in skip file (SMP-14): a statement id: every test citing it"
    assert not report["verdict"]["conformant"] and not report["run"]["complete"]
    assert "listed in skip file (SMP-14): a statement id: every test citing it" in proc.stdout
    for entry in unmatched:
        assert f"TinkerSkipFileWarning: skip-file entry {entry!r} matches no collected test" in proc.stdout
    assert "known-failure" in (tmp_path / "report.md").read_text()
