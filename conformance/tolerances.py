"""The spec's numeric tolerance classes (spec README, TOL-1..TOL-4) and comparison helpers.

| Class  | per element (token)          | sums and scalars (sum)       | replays                                 |
|--------|------------------------------|------------------------------|-----------------------------------------|
| mock   | atol 1e-6, rtol 1e-6         | atol 1e-6, rtol 1e-6         | bit-identical                           |
| fp32   | atol 1e-4, rtol 0            | atol 1e-4, rtol 1e-4         | bit-identical if `deterministic`        |
| bf16   | atol 5e-2, rtol 0            | atol 5e-2, rtol 2e-2         | bit-identical if `deterministic`        |

A value ``a`` matches a reference ``b`` when ``|a - b| <= atol + rtol * |b|`` (TOL-2), element by
element; NaN never matches and an infinity matches only the same infinity. Where a computation
amplifies rounding (optimizer state, magnitudes far from 1), the check adds a per-element
allowance derived from the computation with the class's ``unit_roundoff`` (TOL-5, passed as
``slack``; see ``conformance.adamw``).

``assert_close`` uses the *active* class, which the conformance plugin sets from the backend's
declaration (``set_active``); pass ``tolerance=`` to override. This module is light (numpy only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "TOLERANCES",
    "ToleranceClass",
    "Kind",
    "active",
    "resolve",
    "set_active",
    "assert_close",
    "assert_replay",
    "assert_mapping_close",
    "mismatch_summary",
]

Kind = Literal["token", "sum"]


@dataclass(frozen=True)
class ToleranceClass:
    """One tolerance class: per-element (``token``) and scalar (``sum``) tolerances, replay rule."""

    name: str
    token_atol: float
    token_rtol: float
    sum_atol: float
    sum_rtol: float
    #: unit roundoff of the working precision the class stands for (2**-53 float64, 2**-24
    #: float32, 2**-8 bfloat16): the per-operation relative error of the computation-derived
    #: bounds (spec README, "Derived bounds"; ``conformance.adamw.adamw_allowance``)
    unit_roundoff: float = 2.0**-24
    #: replays are bit-identical for every backend of this class (only ``mock``); other classes
    #: promise it only when the backend declares ``deterministic`` (TOL-4)
    bit_exact_replays: bool = False

    def tolerances(self, kind: Kind) -> tuple[float, float]:
        """``(atol, rtol)`` for ``kind``."""
        if kind == "token":
            return self.token_atol, self.token_rtol
        if kind == "sum":
            return self.sum_atol, self.sum_rtol
        raise ValueError(f"kind must be 'token' or 'sum', got {kind!r}")


TOLERANCES: Mapping[str, ToleranceClass] = {
    "mock": ToleranceClass("mock", 1e-6, 1e-6, 1e-6, 1e-6, unit_roundoff=2.0**-53, bit_exact_replays=True),
    "fp32": ToleranceClass("fp32", 1e-4, 0.0, 1e-4, 1e-4, unit_roundoff=2.0**-24),
    "bf16": ToleranceClass("bf16", 5e-2, 0.0, 5e-2, 2e-2, unit_roundoff=2.0**-8),
}

_active: ToleranceClass = TOLERANCES["mock"]
_deterministic: bool = True


def set_active(name: str, deterministic: bool = False) -> ToleranceClass:
    """Make ``name`` the class ``assert_close`` uses; ``deterministic`` is the backend's declaration."""
    global _active, _deterministic
    if name not in TOLERANCES:
        raise ValueError(f"unknown tolerance class {name!r}; known: {sorted(TOLERANCES)} (TOL-1)")
    _active = TOLERANCES[name]
    _deterministic = deterministic or _active.bit_exact_replays
    return _active


def active() -> ToleranceClass:
    """The class in force (``mock`` until the plugin sets the backend's)."""
    return _active


def resolve(tolerance: str | ToleranceClass | None = None) -> ToleranceClass:
    """The class named by ``tolerance`` (a name or a class), or the active one for ``None``."""
    return _resolve(tolerance)


def _resolve(tolerance: str | ToleranceClass | None) -> ToleranceClass:
    if tolerance is None:
        return _active
    if isinstance(tolerance, ToleranceClass):
        return tolerance
    return TOLERANCES[tolerance]


def _as_array(value: Any) -> npt.NDArray[np.float64]:
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        value = value.to_numpy()  # TensorData
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()  # torch tensor
    return np.asarray([np.nan if v is None else v for v in value] if isinstance(value, list) else value, np.float64)


def _matches(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], atol: npt.ArrayLike, rtol: float) -> Any:
    finite = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= np.asarray(atol) + rtol * np.abs(b)
        same_inf = np.isinf(a) & np.isinf(b) & (a == b)
    return (finite & close) | same_inf


def mismatch_summary(actual: Any, expected: Any) -> str:
    """Max and mean absolute difference of two arrays (NaN-aware), for failure messages."""
    a, b = _as_array(actual), _as_array(expected)
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != expected shape {list(b.shape)}"
    if a.size == 0:
        return "empty arrays"
    diff = np.abs(a - b)
    finite = diff[np.isfinite(diff)]
    max_d = float(finite.max()) if finite.size else float("nan")
    mean_d = float(finite.mean()) if finite.size else float("nan")
    return f"max abs diff {max_d:.3e}, mean abs diff {mean_d:.3e}, non-finite mismatches {int(diff.size - finite.size)}"


def assert_close(
    actual: Any,
    expected: Any,
    kind: Kind = "token",
    statement: str = "FB-3",
    *,
    what: str = "",
    tolerance: str | ToleranceClass | None = None,
    slack: npt.ArrayLike = 0.0,
) -> None:
    """Assert TOL-2 closeness of ``actual`` to the reference ``expected`` with the class tolerances.

    ``kind`` picks per-element (``"token"``) or scalar (``"sum"``) tolerances (TOL-3). ``slack`` is
    an extra absolute allowance (scalar or per element) for checks that recompute a formula from
    values the API rounded to float32; it is reported in the message. The failure message names
    the statement, the class, and the max and mean absolute difference.
    """
    cls = _resolve(tolerance)
    atol, rtol = cls.tolerances(kind)
    a, b = _as_array(actual), _as_array(expected)
    label = f"[{statement}] {what}".rstrip()
    if a.shape != b.shape:
        raise AssertionError(f"{label}: shape {list(a.shape)} != expected shape {list(b.shape)}")
    extra = np.broadcast_to(np.asarray(slack, np.float64), a.shape) if a.ndim else np.asarray(slack, np.float64)
    ok = _matches(a, b, atol + extra, rtol)
    if np.all(ok):
        return
    bad = np.argwhere(~np.asarray(ok)) if a.ndim else np.zeros((1, 0), int)
    first = tuple(int(i) for i in bad[0])
    slack_note = f" + slack {float(np.max(extra)):.3e}" if np.any(extra) else ""
    raise AssertionError(
        f"{label}: {len(bad)}/{max(a.size, 1)} values outside the {cls.name} {kind} tolerance "
        f"(atol={atol:g}{slack_note}, rtol={rtol:g}); {mismatch_summary(a, b)}; "
        f"first mismatch at {list(first)}: actual {a[first]!r}, expected {b[first]!r}"
    )


def assert_replay(
    actual: Any,
    expected: Any,
    kind: Kind = "token",
    statement: str = "TOL-4",
    *,
    what: str = "",
    deterministic: bool | None = None,
) -> None:
    """A replay (TOL-4): bit-identical for class ``mock`` or ``deterministic`` backends, else within tolerance."""
    exact = _deterministic if deterministic is None else deterministic
    if not exact:
        assert_close(actual, expected, kind, statement, what=what)
        return
    a, b = _as_array(actual), _as_array(expected)
    label = f"[{statement}] {what}".rstrip()
    if a.shape != b.shape:
        raise AssertionError(f"{label}: shape {list(a.shape)} != expected shape {list(b.shape)}")
    if not np.array_equal(a, b, equal_nan=False):
        raise AssertionError(
            f"{label}: a replay must be bit-identical on this backend (class {_active.name} or `deterministic`); "
            f"{mismatch_summary(a, b)}"
        )


def assert_mapping_close(
    actual: Mapping[str, Any],
    expected: Mapping[str, Any],
    kind: Kind = "token",
    statement: str = "FB-3",
    *,
    what: str = "",
    replay: bool = False,
) -> None:
    """``assert_close`` (or ``assert_replay``) on every key of two name -> array mappings."""
    if set(actual) != set(expected):
        raise AssertionError(f"[{statement}] {what}: keys differ: {sorted(set(actual) ^ set(expected))}")
    for key in expected:
        if replay:
            assert_replay(actual[key], expected[key], kind, statement, what=f"{what} {key}")
        else:
            assert_close(actual[key], expected[key], kind, statement, what=f"{what} {key}")
