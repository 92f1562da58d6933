"""The README's compliance matrix is generated from certificates, and ``--check`` catches a stale
block or a certificate that does not verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tinker_std.conformance.certificate import write_certificate
from tinker_std.conformance.matrix import END, START, main, render

REPORT = {
    "spec_version": "0.1",
    "spec": {"version": "0.1", "hash": "sha256:0123456789abcdef0123"},
    "backend": "demo",
    "provider": {"package": "demo-backend", "version": "1.2"},
    "verdict": {"conformant": False, "reasons": []},
    "capabilities": ["introspection"],
    "tolerance_class": "fp32",
    "statements": {
        "FB-1": {"result": "pass", "level": "MUST"},
        "FB-2": {"result": "fail", "level": "MUST"},
        "FB-3": {"result": "unverified", "level": "MUST"},
        "SMP-12": {"result": "skipped-not-declared", "level": "MAY", "capability": "seeded_sampling"},
    },
}


def test_render_counts_results_per_provider_and_prefix() -> None:
    text = render([("acme", REPORT)])
    row = "| acme | `demo` | demo-backend 1.2 | 0.1 `0123456789ab` | no | fp32 | `introspection` "
    row += "| 1 | 1 | 0 | 1 | 1 | 0 |"
    assert row in text
    assert "| FB | 1/3 (1 FAIL, 1 unverified) |" in text
    assert "| SMP | 0/1 (1 not declared) |" in text
    assert "| FB-2 | MUST | FAIL |" in text


def test_check_fails_on_a_stale_block_or_a_broken_certificate_and_write_fixes_the_block(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "acme").mkdir(parents=True)
    (results / "acme" / "report.json").write_text(json.dumps(REPORT))
    write_certificate(results / "acme")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\nafter\n")
    args = ["--results", str(results), "--readme", str(readme)]
    assert main([*args, "--check"]) == 1
    assert main([*args, "--write"]) == 0
    assert main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\nafter\n") and "old" not in text and "| acme |" in text
    shutil.copytree(results / "acme", results / "beta")  # a second provider's row appears
    assert main([*args, "--check"]) == 1 and main([*args, "--write"]) == 0 and "| beta |" in readme.read_text()
    tampered = json.loads((results / "beta" / "report.json").read_text())
    tampered["statements"]["FB-2"]["result"] = "pass"
    (results / "beta" / "report.json").write_text(json.dumps(tampered))
    assert main([*args, "--write"]) == 1  # written, but the tampered certificate is reported
    assert main([*args, "--check"]) == 1
