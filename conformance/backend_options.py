"""The constructor options the conformance harness gives the backend under test.

The options come from ``--tinker-backend-config`` (a JSON object); the harness adds a fresh
``checkpoint_dir`` where the backend's constructor takes one, so that checkpoints of a run land in
a temporary folder that the checkpoint-integrity tests can inspect (CKPT-14, CKPT-15). A backend
may still refuse that option for the configuration it was given, as CAP-4 asks of an option that
cannot take effect: the ``tinker`` backend pointed at a remote server (whose checkpoints live on
the server) refuses ``checkpoint_dir`` with a ``BadRequestError`` naming it. ``open_service`` then
drops the option the harness added (never one the user wrote) and opens the client without it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinker_std import Backend, ServiceClient

__all__ = ["CHECKPOINT_DIR", "accepts_option", "open_service", "read_options"]

#: The option the harness adds where the backend takes it.
CHECKPOINT_DIR = "checkpoint_dir"


def accepts_option(cls: type[Any], option: str) -> bool:
    """Whether ``cls``'s constructor takes ``option`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def read_options(path: str | None) -> dict[str, Any]:
    """The JSON object of constructor options at ``path`` (none without a path); ``ValueError``
    naming the file when it cannot be read or holds something else."""
    if not path:
        return {}
    try:
        options = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tinker-backend-config {path}: {exc}") from exc
    if not isinstance(options, dict):
        raise ValueError(f"--tinker-backend-config {path}: must hold a JSON object of constructor options")
    return options


def open_service(cls: type[Backend], options: dict[str, Any], user_options: dict[str, Any]) -> ServiceClient:
    """A ``ServiceClient`` over ``cls`` with ``options``. When the backend refuses the
    ``checkpoint_dir`` the harness added (not one of ``user_options``), that entry is removed from
    ``options`` itself, which the fixtures share, and the client is opened without it."""
    from tinker_std import BadRequestError, ServiceClient

    try:
        return ServiceClient(cls, **options)
    except BadRequestError as exc:
        if exc.field != CHECKPOINT_DIR or CHECKPOINT_DIR in user_options or CHECKPOINT_DIR not in options:
            raise
    del options[CHECKPOINT_DIR]
    return ServiceClient(cls, **options)
