"""The numbered statements of the specification, parsed from ``spec/*.md`` when it is available.

A statement is a list item (spec README, "Statement format")::

    - **PREFIX-N** [LEVEL] text
    - **PREFIX-N** [LEVEL, capability `name`] text
    - **PREFIX-N** [LEVEL, tinker-std] text
    - **PREFIX-N** [LEVEL, unverified] text
    - **PREFIX-N** [MUST, capability `name`, tinker-std, unverified] text

The tags after the level are optional and, when present, in that order. ``tinker-std`` marks a
tinker-std addition (``origin="tinker-std"``); without it a statement is Tinker semantics
(``origin="tinker"``). ``unverified`` marks a statement that cannot be checked black-box. A list
item that starts like a statement (``- **PREFIX-N** [``) but whose bracket does not parse raises
``SpecFormatError`` naming the file and line, so a typo in an annotation is loud, never a
silently untagged statement.

The spec folder is found at ``$TINKER_STD_SPEC_DIR``, else next to the package in a source
checkout (``<repo>/spec``); an installed wheel has no spec folder, and then ``load_statements``
returns ``{}`` and ``spec_hash`` ``None``.

The spec's content hash (``spec_hash``) is the sha256 of ``spec/README.md`` followed by every
``spec/NN-*.md`` in name order, byte for byte; anyone can recompute it with
``cat spec/README.md spec/[0-9][0-9]-*.md | sha256sum``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "Statement",
    "SpecFormatError",
    "STATEMENT_RE",
    "ID_RE",
    "spec_dir",
    "spec_files",
    "spec_hash",
    "load_statements",
    "parse_statement",
]

#: The start of a statement line: ``- **PREFIX-N** [`` (the bracket's content is parsed separately).
STATEMENT_START_RE = re.compile(r"^- \*\*([A-Z]+-\d+)\*\* \[")
#: A whole statement bracket: level, then the optional tags in their fixed order.
STATEMENT_RE = re.compile(
    r"^- \*\*(?P<id>[A-Z]+-\d+)\*\* \[(?P<level>MUST|SHOULD|MAY)"
    r"(?:, capability `(?P<capability>[^`]+)`)?(?P<tinker_std>, tinker-std)?(?P<unverified>, unverified)?\]"
    r"(?: (?P<text>.*))?$"
)
ID_RE = re.compile(r"^[A-Z]+-\d+$")

Origin = Literal["tinker", "tinker-std"]
Level = Literal["MUST", "SHOULD", "MAY"]


class SpecFormatError(ValueError):
    """A spec line that starts like a statement but whose ``[LEVEL, tags]`` does not parse."""


@dataclass(frozen=True)
class Statement:
    """One normative statement.

    ``origin``: ``"tinker"`` (Tinker semantics: what hosted Tinker / the SDK does) or
    ``"tinker-std"`` (an addition of this standard). ``unverified``: no black-box check is possible;
    the report shows it ``unverified`` and it withholds a conformant verdict.
    """

    id: str
    level: Level
    capability: str | None
    file: str
    origin: Origin = "tinker"
    unverified: bool = False
    text: str = ""


def parse_statement(line: str, file: str = "<spec>", number: int = 0) -> Statement | None:
    """The statement on ``line``, ``None`` when the line is not a statement.

    Raises ``SpecFormatError`` for a line that starts like one but is malformed."""
    if not STATEMENT_START_RE.match(line):
        return None
    match = STATEMENT_RE.match(line)
    if match is None:
        raise SpecFormatError(
            f"{file}:{number}: malformed statement annotation (expected '[LEVEL]' then optionally "
            f"', capability `name`', ', tinker-std', ', unverified' in that order): {line[:120]!r}"
        )
    level: Level = match.group("level")  # type: ignore[assignment]  # the regex admits only the three
    return Statement(
        id=match.group("id"),
        level=level,
        capability=match.group("capability"),
        file=file,
        origin="tinker-std" if match.group("tinker_std") else "tinker",
        unverified=bool(match.group("unverified")),
        text=(match.group("text") or "").strip(),
    )


def spec_dir() -> Path | None:
    """The folder holding the spec's markdown files, or ``None``."""
    env = os.environ.get("TINKER_STD_SPEC_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "spec")
    for folder in candidates:
        if (folder / "README.md").is_file():
            return folder
    return None


def spec_files(folder: Path) -> list[Path]:
    """The normative files, in hash order: ``README.md``, then ``NN-*.md`` by name."""
    numbered = sorted(p for p in folder.glob("*.md") if re.match(r"^\d\d-", p.name))
    return [folder / "README.md", *numbered]


def spec_hash(folder: Path | None = None) -> str | None:
    """``sha256:<hex>`` of the spec text (module docstring), or ``None`` without a spec folder."""
    folder = folder if folder is not None else spec_dir()
    if folder is None:
        return None
    digest = hashlib.sha256()
    for path in spec_files(folder):
        digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def load_statements(folder: Path | None = None) -> dict[str, Statement]:
    """Every statement of the spec, keyed by id, in file order (README first)."""
    folder = folder if folder is not None else spec_dir()
    if folder is None:
        return {}
    found: dict[str, Statement] = {}
    for file in spec_files(folder):
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            statement = parse_statement(line, file.name, number)
            if statement is not None:
                found[statement.id] = statement
    return found
