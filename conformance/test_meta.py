"""The suite itself: every cited statement exists in the spec (no invented ids)."""

from __future__ import annotations

import pytest

from tinker_std.conformance.plugin import is_conformance_item, spec_ids
from tinker_std.conformance.spec_index import ID_RE, load_statements


def test_cited_statement_ids_exist(request: pytest.FixtureRequest) -> None:
    cited = {sid for item in request.session.items if is_conformance_item(item) for sid in spec_ids(item)}
    malformed = sorted(s for s in cited if not ID_RE.match(s))
    assert not malformed, f"malformed statement ids in @pytest.mark.spec: {malformed}"
    known = load_statements()
    if not known:
        pytest.skip("the spec's markdown is not available (set TINKER_STD_SPEC_DIR)")
    unknown = sorted(cited - set(known))
    assert not unknown, f"@pytest.mark.spec cites ids that the spec does not define: {unknown}"


@pytest.mark.spec("TOL-2", "TOL-3")
def test_tolerance_rule() -> None:
    """The suite's comparison implements TOL-2's pass rule exactly."""
    import math

    from tinker_std.conformance.tolerances import TOLERANCES, assert_close

    mock, bf16 = TOLERANCES["mock"], TOLERANCES["bf16"]
    assert_close(1.0 + 1.9e-6, 1.0, "sum", "TOL-2", tolerance=mock)  # atol + rtol * |b| = 2e-6
    with pytest.raises(AssertionError, match=r"\[TOL-2\].*max abs diff"):
        assert_close(1.0 + 2.1e-6, 1.0, "sum", "TOL-2", tolerance=mock)
    assert_close([0.0, -5.0], [0.04, -5.04], "token", "TOL-2", tolerance=bf16)
    with pytest.raises(AssertionError):
        assert_close([10.0], [10.06], "token", "TOL-2", tolerance=bf16)  # per-element rtol is 0
    assert_close(10.0, 10.2, "sum", "TOL-2", tolerance=bf16)  # 5e-2 + 2e-2 * 10.2
    for a, b in ((math.nan, math.nan), (math.inf, -math.inf), (math.inf, 1e300), (1.0, math.nan)):
        with pytest.raises(AssertionError):
            assert_close(a, b, "token", "TOL-2", tolerance=mock)
    assert_close([math.inf, -math.inf], [math.inf, -math.inf], "token", "TOL-2", tolerance=mock)
