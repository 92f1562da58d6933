"""Errors only the Modal backend raises, and the credential check that raises the first."""

from __future__ import annotations

import importlib.util

from tinker_std.errors import RequestFailedError, TinkerError

__all__ = [
    "ModalNotInstalledError",
    "ModalCredentialsError",
    "ContainerLostError",
    "require_modal",
    "require_credentials",
    "OFFLINE_HINT",
]

OFFLINE_HINT = (
    "To run the Modal class in this process instead (no Modal account; tests), pass offline=True or set "
    "TINKER_STD_MODAL_OFFLINE=1."
)


class ModalNotInstalledError(TinkerError):
    """The ``modal`` package is missing."""

    def __init__(self) -> None:
        super().__init__("the modal backend needs the `modal` package: pip install 'tinker-std[modal]'")


class ModalCredentialsError(TinkerError):
    """No Modal token is configured (raised when the backend is constructed, before any call)."""

    def __init__(self) -> None:
        super().__init__(
            "the modal backend found no Modal credentials. Run `modal token new` (it stores a token in "
            "~/.modal.toml), or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (create them at "
            "https://modal.com/settings/tokens). Then deploy the app once with `tinker-std modal deploy`, or pass "
            f"ephemeral=True. {OFFLINE_HINT}"
        )


class ContainerLostError(RequestFailedError):
    """The container that held a training model or sampler was replaced (preempted, scaled down
    after ``scaledown_window`` idle seconds, or past its ``timeout``): the in-memory adapter,
    gradient and optimizer state went with it. Checkpoints on the Volume survive."""

    def __init__(self, kind: str, object_id: str, old_instance: str, new_instance: str) -> None:
        self.object_id = object_id
        hint = (
            "re-create it from its last checkpoint: service.create_training_client_from_state('tinker://...') "
            "(list checkpoints with `modal volume ls tinker-std-checkpoints`)"
            if kind == "training model"
            else "create a new sampling client (from a saved checkpoint path or a training client)"
        )
        super().__init__(
            f"the Modal container holding {kind} {object_id!r} is gone (container {old_instance} was preempted or "
            f"scaled down; the request reached a new container {new_instance}); its in-memory state is lost: {hint}",
            category="server",
        )


def require_modal() -> None:
    """``ModalNotInstalledError`` unless ``modal`` can be imported."""
    if importlib.util.find_spec("modal") is None:
        raise ModalNotInstalledError()


def require_credentials() -> None:
    """``ModalCredentialsError`` unless a Modal token id and secret are configured (environment or
    ``~/.modal.toml``). Reads configuration only: no network, so it answers at once."""
    from modal.config import config

    if not (config.get("token_id") and config.get("token_secret")):
        raise ModalCredentialsError()
