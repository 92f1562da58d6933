"""The numbered statements of the specification, parsed from ``spec/*.md`` when it is available.

A statement is a list item ``- **PREFIX-N** [LEVEL] text`` or ``- **PREFIX-N** [LEVEL, capability
`name`] text`` (spec README, "Statement format"). The spec folder is found at
``$TINKER_STD_SPEC_DIR``, else next to the package in a source checkout (``<repo>/spec``); an
installed wheel has no spec folder, and then ``load_statements`` returns ``{}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Statement", "STATEMENT_RE", "ID_RE", "spec_dir", "load_statements"]

STATEMENT_RE = re.compile(
    r"^- \*\*([A-Z]+-\d+)\*\* \[(MUST|SHOULD|MAY)(?:, capability `([^`]+)`)?(?:, tinker-std)?(?:, unverified)?\]"
)
ID_RE = re.compile(r"^[A-Z]+-\d+$")


@dataclass(frozen=True)
class Statement:
    id: str
    level: str
    capability: str | None
    file: str


def spec_dir() -> Path | None:
    """The folder holding the spec's markdown files, or ``None``."""
    env = os.environ.get("TINKER_STD_SPEC_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "spec")
    for folder in candidates:
        if (folder / "README.md").is_file():
            return folder
    return None


def load_statements(folder: Path | None = None) -> dict[str, Statement]:
    """Every statement of the spec, keyed by id, in file order."""
    folder = folder if folder is not None else spec_dir()
    if folder is None:
        return {}
    found: dict[str, Statement] = {}
    for file in sorted(folder.glob("*.md")):
        for line in file.read_text(encoding="utf-8").splitlines():
            match = STATEMENT_RE.match(line)
            if match:
                found[match.group(1)] = Statement(match.group(1), match.group(2), match.group(3), file.name)
    return found
