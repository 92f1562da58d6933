"""What the Modal app is made of: names, GPU, timeouts, image contents (no Modal import here).

``ContainerSettings`` is the single description of the deployed class. ``app.py`` turns it into
Modal objects; ``tinker-std modal deploy`` fills it from the command line and hands it to
``app.py`` through ``TINKER_STD_MODAL_*`` environment variables, because Modal defines the app when
it imports ``app.py`` (on the laptop at deploy time and again inside each container), and both
imports must describe the same class.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "APP_NAME",
    "CLASS_NAME",
    "CHECKPOINT_VOLUME",
    "MODELS_VOLUME",
    "CHECKPOINT_MOUNT",
    "MODELS_MOUNT",
    "ContainerSettings",
    "image_requirements",
    "source_checkout",
]

APP_NAME = "tinker-std"
CLASS_NAME = "TinkerStdTrainer"
CHECKPOINT_VOLUME = "tinker-std-checkpoints"
MODELS_VOLUME = "tinker-std-models"
CHECKPOINT_MOUNT = "/checkpoints"
MODELS_MOUNT = "/models"  # HF_HOME and the built-in models' cache: downloads outlive containers
PYTHON_VERSION = "3.11"

#: Packages the image installs, pinned to the versions installed here, so that the container runs
#: the engine this machine tested. torch is installed from PyPI's default (CUDA) wheels.
_ENGINE_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "numpy",
    "pydantic",
    "tqdm",
    "huggingface-hub",
)
_GPU = re.compile(r"^[A-Za-z0-9-]+(?::[1-9][0-9]*)?$")


def _env(name: str) -> str | None:
    value = os.environ.get(f"TINKER_STD_MODAL_{name.upper()}")
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class ContainerSettings:
    """The deployed class's Modal options.

    ``gpu``: a Modal GPU type (``"H100"``, ``"A100-80GB"``, ``"L40S"``, ``"A10G"``, ``"T4"``...);
    ``gpu_count`` GPUs per container (the torch engine uses the first; more are for the ``fsdp``
    engine). ``region``: Modal region(s), e.g. ``"us-east"`` (``None``: anywhere). ``timeout``:
    seconds one call may run. ``scaledown_window``: idle seconds before a container stops (its
    in-memory state goes with it; checkpoints stay on the Volume). ``max_inputs``: concurrent
    inputs per container (``@modal.concurrent``), so sampling requests of many clients batch in
    the engine. ``hf_secret``: name of a Modal Secret holding ``HF_TOKEN`` for gated models.
    One container per base model (``max_containers=1``) keeps every training client's state in
    one place.
    """

    app_name: str = APP_NAME
    gpu: str = "H100"
    gpu_count: int = 1
    region: str | None = None
    timeout: int = 3600
    scaledown_window: int = 600
    max_inputs: int = 32
    checkpoint_volume: str = CHECKPOINT_VOLUME
    models_volume: str = MODELS_VOLUME
    hf_secret: str | None = None
    max_containers: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        if not _GPU.match(self.gpu) or ":" in self.gpu:
            raise ValueError(f"gpu must be a Modal GPU type such as 'H100' (count goes in gpu_count), got {self.gpu!r}")
        for name in ("gpu_count", "timeout", "scaledown_window", "max_inputs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def gpu_spec(self) -> str:
        """Modal's ``gpu=`` string: ``"H100"`` or ``"H100:2"``."""
        return self.gpu if self.gpu_count == 1 else f"{self.gpu}:{self.gpu_count}"

    def cls_options(self) -> dict[str, Any]:
        """The keyword arguments of ``app.cls`` besides ``image``, ``volumes`` and ``secrets``."""
        options: dict[str, Any] = {
            "gpu": self.gpu_spec,
            "timeout": self.timeout,
            "scaledown_window": self.scaledown_window,
            "max_containers": self.max_containers,
        }
        if self.region is not None:
            options["region"] = self.region
        return options

    def container_env(self) -> dict[str, str]:
        """Environment of the container: caches on the models Volume, online hub access, and these
        settings, so that Modal's import of ``app.py`` inside the container defines the same app."""
        return {
            **self.to_env(),
            "HF_HOME": f"{MODELS_MOUNT}/huggingface",
            "TINKER_STD_CACHE_DIR": f"{MODELS_MOUNT}/tinker-std",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "TINKER_STD_CHECKPOINT_DIR": CHECKPOINT_MOUNT,
        }

    def to_env(self) -> dict[str, str]:
        """``TINKER_STD_MODAL_*`` variables that make ``from_env`` return these settings."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.init and value is not None:
                out[f"TINKER_STD_MODAL_{f.name.upper()}"] = str(value)
        return out

    @classmethod
    def from_env(cls) -> ContainerSettings:
        """Settings from ``TINKER_STD_MODAL_*`` variables, defaults for the rest."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = _env(f.name)
            if f.init and raw is not None:
                values[f.name] = int(raw) if f.type in ("int", int) else raw
        return cls(**values)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def image_requirements() -> list[str]:
    """pip requirements of the image: the engine's packages at the versions installed here
    (a local ``+cpu`` label dropped, so the GPU image gets PyPI's CUDA build of the same torch)."""
    out = []
    for name in _ENGINE_PACKAGES:
        version = _installed(name)
        out.append(name if version is None else f"{name}=={version.split('+')[0]}")
    return out


def source_checkout() -> Path | None:
    """The root of the tinker-std checkout this package runs from (a folder with pyproject.toml
    naming tinker-std), or ``None`` when it runs from an installed wheel."""
    import tinker_std

    root = Path(tinker_std.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tinker-std"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None
