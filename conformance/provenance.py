"""Where a conformance report comes from: suite and spec versions, the provider's package, the
machine, and the Hypothesis settings. Cheap to import; every probe tolerates a missing piece
(``None`` rather than an error), since a report must still be written on an odd install."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .spec_index import load_statements, spec_dir, spec_hash

__all__ = ["suite_info", "spec_info", "provider_package", "environment", "hypothesis_info", "REPO_DIR"]

_CHECKOUT = Path(__file__).resolve().parent.parent
#: The source checkout the suite runs from (``None`` for an installed wheel).
#: A worktree has a .git file, a clone a .git folder.
REPO_DIR: Path | None = _CHECKOUT if (_CHECKOUT / ".git").exists() else None


def _git(*args: str) -> str | None:
    if REPO_DIR is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def suite_info() -> dict[str, Any]:
    """``{version, tinker_std_version, git_commit, git_dirty}``: the suite ships with tinker-std,
    so its version is tinker-std's; the commit is given only in a git checkout."""
    try:
        from tinker_std import __version__
    except Exception:  # pragma: no cover - a broken install still gets a report
        __version__ = "unknown"
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "version": __version__,
        "tinker_std_version": _version("tinker-std") or __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


def spec_info() -> dict[str, Any]:
    """``{version, hash, statements, must}``; ``hash`` is ``spec_index.spec_hash`` (``None``
    without the spec's markdown)."""
    try:
        from tinker_std import SPEC_VERSION
    except Exception:  # pragma: no cover
        SPEC_VERSION = "unknown"
    statements = load_statements()
    return {
        "version": SPEC_VERSION,
        "hash": spec_hash(),
        "hash_command": "cat spec/README.md spec/[0-9][0-9]-*.md | sha256sum" if spec_dir() else None,
        "statements": len(statements),
        "must": sum(1 for s in statements.values() if s.level == "MUST"),
    }


def provider_package(module: str | None) -> dict[str, Any]:
    """``{module, package, version}`` of the distribution that installs ``module`` (``package``
    ``None`` for a module on ``sys.path`` that no distribution owns)."""
    if not module:
        return {"module": None, "package": None, "version": None}
    top = module.split(".", 1)[0]
    try:
        owners = importlib.metadata.packages_distributions().get(top, [])
    except Exception:  # pragma: no cover - broken metadata
        owners = []
    package = owners[0] if owners else None
    return {"module": module, "package": package, "version": _version(package) if package else None}


def environment() -> dict[str, Any]:
    """``{python, implementation, platform, machine, torch, hypothesis, device}``; ``device`` is the CUDA
    device name when torch is already imported and sees one, else ``cpu``."""
    device = "cpu"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                device = f"cuda: {torch.cuda.get_device_name(0)}"
        except Exception:  # pragma: no cover
            device = "unknown"
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": _version("torch"),
        "hypothesis": _version("hypothesis"),
        "device": device,
    }


def hypothesis_info(max_examples: int, seed: object) -> dict[str, Any]:
    """The settings that decide which examples ran.

    Every property test of the suite carries its settings explicitly (``strategies.conformance_settings``:
    derandomized, no example database; ``tests/test_conformance_settings.py`` keeps it so), so the
    examples depend only on ``max_examples``, the suite's code and Hypothesis's version, never on
    the active Hypothesis profile (Hypothesis loads a ``ci`` profile when it sees a CI variable,
    which must not change a certificate). ``seed`` is ``--hypothesis-seed`` as given; derandomized
    tests do not read it."""
    return {
        "max_examples": max_examples,
        "seed": None if seed is None else str(seed),
        "derandomize": True,
        "database": None,
    }
