"""The Modal app: an image with tinker-std in it, a stateful GPU class, two Volumes.

``modal deploy -m tinker_std.backends.modal.app`` (or ``tinker-std modal deploy``) deploys it;
the settings come from ``TINKER_STD_MODAL_*`` variables (``settings.ContainerSettings``). The class
``TinkerStdTrainer`` is a thin shell: ``@modal.enter`` builds a ``ContainerService`` (the torch
engine, base model loaded once per container) and each ``@modal.method`` forwards one wire payload
to it. A container serves one base model (the ``base_model`` parameter; ``max_containers=1``), so
every training client of that model reaches the container holding its adapter and optimizer.

Checkpoints are written to the ``tinker-std-checkpoints`` Volume and committed after every save;
model downloads go to the ``tinker-std-models`` Volume. Those Volume calls happen only inside a
Modal container (``modal.is_local()`` is false there): through ``.local()`` (the offline tests)
the class runs in-process against a local checkpoint folder and never touches Modal's servers.
"""

# No `from __future__ import annotations`: Modal reads the class parameters' annotations as types.
import json
import os
from typing import Any

import modal

from .service import ContainerService
from .settings import (
    CHECKPOINT_MOUNT,
    MODELS_MOUNT,
    PYTHON_VERSION,
    ContainerSettings,
    image_requirements,
    source_checkout,
)
from .wire import Payload

__all__ = ["app", "image", "settings", "checkpoints_volume", "models_volume", "TinkerStdTrainer", "deploy"]

_IGNORE = [
    ".git",
    ".venv",
    "**/__pycache__",
    "*.egg-info",
    "**/*.egg-info",
    "runs",
    ".ci-reports",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "bench/results",
]


def build_image(settings: ContainerSettings) -> modal.Image:
    """Debian slim + the engine's packages at this machine's versions + this tinker-std.

    From a source checkout the checkout is copied in and pip-installed (so local and remote code are
    the same version, uncommitted edits included); from an installed wheel the package is copied.
    """
    image = (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install(*image_requirements())
        .env(settings.container_env())
    )
    if not modal.is_local():  # inside a container the definition is not built again
        return image
    root = source_checkout()
    if root is not None:
        return image.add_local_dir(root, "/opt/tinker-std", copy=True, ignore=_IGNORE).run_commands(
            "pip install --no-deps /opt/tinker-std"
        )
    return image.add_local_python_source("tinker_std", copy=True)


settings = ContainerSettings.from_env()
app = modal.App(settings.app_name)
image = build_image(settings)
checkpoints_volume = modal.Volume.from_name(settings.checkpoint_volume, create_if_missing=True)
models_volume = modal.Volume.from_name(settings.models_volume, create_if_missing=True)
_secrets = [modal.Secret.from_name(settings.hf_secret)] if settings.hf_secret else []


def _download(name: str, weights: bool) -> bool:
    """Fetch a hub model into the models Volume's HF cache (a container has no local models).
    ``False`` when ``name`` is a built-in or a local folder (nothing to fetch)."""
    from tinker_std.backends.torch.models import BUILTIN_MODELS

    if name in BUILTIN_MODELS or os.path.isdir(name):
        return False
    from huggingface_hub import snapshot_download

    patterns = None if weights else ["*.json", "*.txt", "*.model", "*.tiktoken"]
    snapshot_download(name, allow_patterns=patterns)
    return True


# serialized: Modal pickles the class by reference (the image has this tinker-std installed), instead of
# locating the module's source folder, which fails for an editable checkout whose tinker_std.backends
# lives outside tinker_std/ (pyproject's package-dir).
@app.cls(
    image=image,
    volumes={CHECKPOINT_MOUNT: checkpoints_volume, MODELS_MOUNT: models_volume},
    secrets=_secrets,
    serialized=True,
    **settings.cls_options(),
)
@modal.concurrent(max_inputs=settings.max_inputs)
class TinkerStdTrainer:
    """One base model's training service. Parameters: ``base_model`` (loaded in ``@modal.enter``),
    ``checkpoint_dir`` (``""``: the checkpoint Volume), ``engine_options`` (JSON of ``TorchBackend``
    options: ``dtype``, ``models``, ``max_context_length``, ``batching``)."""

    base_model: str = modal.parameter(default="")
    checkpoint_dir: str = modal.parameter(default="")
    engine_options: str = modal.parameter(default="{}")

    @modal.enter()
    def start(self) -> None:
        options: dict[str, Any] = json.loads(self.engine_options)
        in_container = not modal.is_local()
        if in_container:
            fetched = [
                _download(name, weights=(name == self.base_model))
                for name in dict.fromkeys([self.base_model, *options.get("models", [])])
                if name
            ]
            if any(fetched):
                models_volume.commit()
        self.service = ContainerService(
            base_model=self.base_model,
            checkpoint_dir=self.checkpoint_dir or CHECKPOINT_MOUNT,
            engine_options=options,
            after_write=checkpoints_volume.commit if in_container else _nothing,
            before_read=checkpoints_volume.reload if in_container else _nothing,
        )

    @modal.exit()
    def stop(self) -> None:
        self.service.close()

    @modal.method()
    def get_server_capabilities(self, payload: Payload) -> Payload:
        return self.service.call("get_server_capabilities", payload)

    @modal.method()
    def tokenizer_files(self, payload: Payload) -> Payload:
        return self.service.call("tokenizer_files", payload)

    @modal.method()
    def create_model(self, payload: Payload) -> Payload:
        return self.service.call("create_model", payload)

    @modal.method()
    def load_model(self, payload: Payload) -> Payload:
        return self.service.call("load_model", payload)

    @modal.method()
    def checkpoint_base_model(self, payload: Payload) -> Payload:
        return self.service.call("checkpoint_base_model", payload)

    @modal.method()
    def release_model(self, payload: Payload) -> Payload:
        return self.service.call("release_model", payload)

    @modal.method()
    def forward_backward(self, payload: Payload) -> Payload:
        return self.service.call("forward_backward", payload)

    @modal.method()
    def optim_step(self, payload: Payload) -> Payload:
        return self.service.call("optim_step", payload)

    @modal.method()
    def read_state(self, payload: Payload) -> Payload:
        return self.service.call("read_state", payload)

    @modal.method()
    def save_state(self, payload: Payload) -> Payload:
        return self.service.call("save_state", payload)

    @modal.method()
    def save_weights_for_sampler(self, payload: Payload) -> Payload:
        return self.service.call("save_weights_for_sampler", payload)

    @modal.method()
    def create_sampler(self, payload: Payload) -> Payload:
        return self.service.call("create_sampler", payload)

    @modal.method()
    def release_sampler(self, payload: Payload) -> Payload:
        return self.service.call("release_sampler", payload)

    @modal.method()
    def sample(self, payload: Payload) -> Payload:
        return self.service.call("sample", payload)


def _nothing() -> None:
    return None


def deploy(environment_name: str | None = None) -> None:
    """Deploy the app under ``settings.app_name`` (needs Modal credentials and network)."""
    with modal.enable_output():
        app.deploy(name=settings.app_name, environment_name=environment_name)
