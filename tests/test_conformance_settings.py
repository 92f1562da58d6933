"""Every property test of the conformance suite carries the suite's own Hypothesis settings.

A certificate records ``derandomize: true`` and no example database (``conformance/provenance.py``):
that is only true when each ``@given`` test is wrapped by ``strategies.conformance_settings``, so the
examples drawn cannot depend on the active Hypothesis profile (``ci`` under a CI variable) or on
examples saved by an earlier run.
"""

from __future__ import annotations

import ast
from pathlib import Path

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _property_tests() -> list[tuple[str, set[str]]]:
    found = []
    for path in sorted(CONFORMANCE.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                names = _decorator_names(node)
                if "given" in names:
                    found.append((f"{path.name}::{node.name}", names))
    return found


def test_every_property_test_uses_the_suites_settings() -> None:
    tests = _property_tests()
    assert len(tests) >= 10, "the scan found too few @given tests: is the conformance folder where it was?"
    loose = [name for name, decorators in tests if "conformance_settings" not in decorators]
    assert not loose, f"@given without @conformance_settings (examples would follow the profile): {loose}"


def test_the_suites_settings_are_derandomized_without_a_database() -> None:
    from tinker_std.conformance.strategies import conformance_settings

    @conformance_settings
    def probe() -> None:
        pass

    applied = probe._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    assert applied.derandomize is True
    assert applied.database is None
