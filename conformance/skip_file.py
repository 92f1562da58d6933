"""The ``--tinker-skip-file`` format: known failures of a provider, each with its justification.

One entry per line; ``#`` to the end of a line is a comment, and the comment on an entry's own line
is the written justification of the known failure it records. An entry is a statement id
(``SMP-12``: every test citing it) or a test node id or a prefix of one that ends at ``::``, ``[``
or ``/`` (``test_sampling.py::test_x``), with or without leading folders.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .spec_index import ID_RE

__all__ = ["read_skip_file", "read_skip_reasons", "skip_entry_matches"]


def _skip_lines(path: str) -> Iterator[tuple[int, str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise pytest.UsageError(f"--tinker-skip-file {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        entry, _, comment = line.partition("#")
        if entry.strip():
            yield number, entry.strip(), comment.strip()


def read_skip_file(path: str) -> dict[str, int]:
    """The entries of a skip file, in file order, with their line numbers: one entry per line,
    ``#`` to the end of a line is a comment."""
    entries: dict[str, int] = {}
    for number, entry, _ in _skip_lines(path):
        entries.setdefault(entry, number)
    return entries


def read_skip_reasons(path: str) -> dict[str, str]:
    """``entry -> justification``: the comment on an entry's own line is the written reason of the
    known failure it records (the report and the verdict quote it; ``""`` when there is none)."""
    reasons: dict[str, str] = {}
    for _, entry, comment in _skip_lines(path):
        reasons.setdefault(entry, comment)
    return reasons


def skip_entry_matches(entry: str, nodeid: str, statements: list[str], path: str | None = None) -> bool:
    """Whether a skip-file ``entry`` selects the test ``nodeid`` (file ``path``) citing ``statements``.

    A statement id (``SMP-12``) selects every test citing it. Anything else is a node id or a
    prefix of one that ends at a boundary (``::``, ``[`` or ``/``), compared with the node id and
    with ``<file>::<test>`` for every path suffix of the test's file (node ids depend on pytest's
    rootdir), so ``test_sampling.py::test_x`` selects ``conformance/test_sampling.py::test_x[a]``
    but not ``test_sampling.py::test_xy``.
    """
    if ID_RE.match(entry):
        return entry in statements
    file, sep, rest = nodeid.partition("::")
    parts = Path(path).as_posix().split("/") if path else file.split("/")
    candidates = [nodeid] + ["/".join(parts[i:]) + sep + rest for i in range(len(parts))]
    return any(
        candidate == entry or (candidate.startswith(entry) and (entry[-1] in ":[/" or candidate[len(entry)] in ":[/"))
        for candidate in candidates
    )
