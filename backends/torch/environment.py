"""Start-up check of the Hugging Face packages the torch engine runs on.

transformers declares the oldest peft its LoRA integration accepts (its dependency table, key
``"peft"``), and a release may need a peft that is not published yet: transformers 5.24 and 5.25
require ``peft>=0.22.0`` while the newest peft is 0.21.2, and then no adapter can be attached. The
engine calls ``check_hf_stack`` when it starts, so such a pair fails at once with one error naming
both installed versions and the pair to install, not inside the first ``create_model``.

``TESTED_VERSIONS`` is the set of the lock (``.ci/requirements.lock``) that CI last passed with;
``scripts/lock.sh`` rewrites it and a test keeps the two equal.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

from tinker_std.errors import IncompatibleEnvironmentError

__all__ = ["TESTED_VERSIONS", "check_hf_stack", "fix_command", "peft_problem"]

TESTED_VERSIONS: Mapping[str, str] = {
    "torch": "2.13.0",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "accelerate": "1.16.0",
}


def fix_command() -> str:
    """The command that installs the tested transformers/peft pair."""
    pins = " ".join(f"'{name}=={TESTED_VERSIONS[name]}'" for name in ("transformers", "peft"))
    return f"pip install {pins}"


def peft_problem(transformers_version: str, peft_version: str, peft_requirement: str) -> str | None:
    """Why ``peft_version`` cannot serve ``transformers_version``, or ``None`` when it can.

    ``peft_requirement`` is the requirement transformers itself declares for peft, such as
    ``"peft>=0.22.0"``.
    """
    from packaging.requirements import Requirement

    wanted = Requirement(peft_requirement).specifier
    if wanted.contains(peft_version, prereleases=True):
        return None
    return (
        f"transformers {transformers_version} requires peft{wanted}, but peft {peft_version} is installed: "
        "with this pair peft cannot attach LoRA adapters, so the torch backend cannot train."
    )


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_hf_stack() -> None:
    """Raise ``IncompatibleEnvironmentError`` unless transformers and peft are installed and fit together."""
    versions = {name: _installed(name) for name in ("transformers", "peft")}
    missing = [name for name, found in versions.items() if found is None]
    installed = {name: found or "not installed" for name, found in versions.items()}
    if missing:
        raise IncompatibleEnvironmentError(
            f"the torch backend needs {' and '.join(missing)} (the 'hf' extra of tinker-std).",
            installed=installed,
            fix="pip install 'tinker-std[hf]'",
        )
    from transformers.dependency_versions_table import deps

    requirement = deps.get("peft")
    transformers_version, peft_version = installed["transformers"], installed["peft"]
    problem = peft_problem(transformers_version, peft_version, requirement) if requirement else None
    if problem is not None:
        raise IncompatibleEnvironmentError(
            problem + f" Tested pair: transformers {TESTED_VERSIONS['transformers']}, peft {TESTED_VERSIONS['peft']}.",
            installed=installed,
            fix=fix_command(),
        )
