"""Mutants: broken providers, one spec statement broken each, that the conformance suite must catch.

Every module of this package (one per spec area: ``loss.py``, ``ordering.py``, ...) exports
``MUTANTS: list[Mutant]``. ``tests/test_mutation.py`` runs the conformance tests named in each
mutant's ``selection`` against its ``backend`` and requires the run to fail with the report marking
``statement`` as ``fail``; the unmutated base backend must pass the same selection. A mutant that
survives is a hole in the suite (issue 19, deliverable 3).

The package folder (``tests/``) is put on ``PYTHONPATH`` of the suite's subprocess, so a mutant's
``backend`` is named ``mutants.<module>:<Class>``. A mutant of the client layer (futures, ordering,
validation, error conversion) subclasses ``mutants._mock.PatchingMock`` and replaces one library
function in its ``patch()``, which the ``-p mutants._runner`` plugin applies before collection.
A MUST statement that cannot have a mutant gets a line in ``EXEMPT`` with the reason. Run one by
hand: ``PYTHONPATH=tests .venv/bin/python -m pytest -q -p no:cacheprovider -p mutants._runner
--pyargs <selection> --tinker-backend mutants.<module>:<Class> --tinker-report r.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Mutant"]


@dataclass(frozen=True)
class Mutant:
    """One broken provider.

    ``backend``: ``mutants.<module>:<Class>`` (a ``Backend`` subclass, usually of ``MockBackend``).
    ``statement``: the MUST statement it breaks; the report must mark it ``fail``.
    ``selection``: the conformance tests (``--pyargs`` node ids such as
    ``tinker_std.conformance.test_training::test_x``) that must catch it.
    ``base``: the unmutated backend the selection must pass (``mock`` unless the mutant derives from
    another backend).
    ``also``: other statements the mutant legitimately breaks (allowed to fail too, not required).
    ``slow``: run only in the slow tier (``-m slow``); the default tier runs the rest, a
    representative subset that keeps it fast.
    """

    backend: str
    statement: str
    selection: tuple[str, ...]
    base: str = "mock"
    also: frozenset[str] = frozenset()
    slow: bool = False
