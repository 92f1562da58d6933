"""The tinker SDK 0.38's top-level names that ``tinker_std`` has for ``import tinker_std as tinker``
beyond its own API, and the ones it refuses by name.

- Errors of the HTTP transport (``AuthenticationError``, ``RateLimitError``, ``APIConnectionError``
  ...): the same class tree as the SDK's (``APIError`` > ``APIStatusError`` > ...; ``errors.py``
  holds the two bases, which tinker-std's own request errors derive from), so ``except`` clauses
  written for the SDK work. An in-process backend has no HTTP, so it never raises these.
- ``ExperimentalWarning``, and the type aliases ``PerDatumLossFn``, ``OptimParams`` (only AdamW in
  spec 0.2) and ``ModelInputChunk`` (only ``EncodedTextChunk``), for annotations.
- ``REFUSED``: the SDK names with no in-process meaning. Reading one from ``tinker_std`` raises
  ``SDKNameUnsupported``, a ``BadRequestError`` whose ``field`` is the name (it is also an
  ``AttributeError``, so ``hasattr`` and ``getattr(..., default)`` stay false and quiet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .errors import APIError, APIStatusError, BadRequestError
from .types import AdamParams, EncodedTextChunk

if TYPE_CHECKING:
    import torch

__all__ = [
    "REFUSED",
    "APIConnectionError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AuthenticationError",
    "BillingError",
    "ExperimentalWarning",
    "InternalServerError",
    "ModelInputChunk",
    "OptimParams",
    "PerDatumLossFn",
    "PermissionDeniedError",
    "RateLimitError",
    "SDKNameUnsupported",
    "UnprocessableEntityError",
    "refuse",
]


class APIConnectionError(APIError):
    """The SDK could not reach the server (never raised in process)."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """A request to the server timed out (never raised in process)."""


class APIResponseValidationError(APIError):
    """The server's answer did not match the SDK's types (never raised in process)."""


class AuthenticationError(APIStatusError):
    """HTTP 401 (never raised in process: an in-process backend takes no API key)."""

    status_code = 401


class BillingError(APIStatusError):
    """HTTP 402 (never raised in process)."""

    status_code = 402


class PermissionDeniedError(APIStatusError):
    """HTTP 403 (never raised in process)."""

    status_code = 403


class UnprocessableEntityError(APIStatusError):
    """HTTP 422 (never raised in process: a bad request is a ``BadRequestError``)."""

    status_code = 422


class RateLimitError(APIStatusError):
    """HTTP 429 (never raised in process: request limits are ``LimitExceededError``, spec LIM)."""

    status_code = 429
    retryable = True


class InternalServerError(APIStatusError):
    """HTTP 5xx (never raised in process: a failed request is a ``RequestFailedError``)."""

    status_code = 500
    retryable = True


class ExperimentalWarning(FutureWarning):
    """The SDK's warning for APIs that may change (tinker-std emits none)."""


#: A per-datum custom loss: ``(logprobs, *the loss_fn_inputs it reads) -> (scalar loss, metrics)``.
PerDatumLossFn = Callable[..., tuple["torch.Tensor", Mapping[str, "torch.Tensor"]]]
#: ``optim_step``'s parameters: AdamW only in spec 0.2 (the SDK also has ``DimuonParams``).
OptimParams = AdamParams
#: A chunk of a ``ModelInput``: token chunks only in spec 0.2 (the SDK also has image/audio chunks).
ModelInputChunk = EncodedTextChunk

#: SDK 0.38 top-level names tinker_std refuses, with why.
REFUSED: dict[str, str] = {
    "AdminClient": "billing, audit logs and project administration are hosted-service features",
    "auth": "an in-process backend takes no credentials (the server uses API keys)",
    "Timeout": "an in-process call has no HTTP timeout",
    "RequestOptions": "an in-process call has no HTTP request options",
    "OptimStepRequest": "a wire type of the HTTP API; in process call TrainingClient.optim_step",
    "DmelChunk": "audio chunks are not part of tinker-std spec 0.2 (SDK-5)",
    "DimuonOptimizerConfig": "only AdamW is part of tinker-std spec 0.2 (SDK-5)",
    "DimuonParams": "only AdamW is part of tinker-std spec 0.2 (SDK-5)",
}


class SDKNameUnsupported(BadRequestError, AttributeError):
    """A tinker SDK name tinker_std does not provide; ``field`` is the name."""


def refuse(name: str) -> SDKNameUnsupported | None:
    """The error for reading SDK name ``name`` from ``tinker_std``, or ``None`` if it is not refused."""
    why = REFUSED.get(name)
    return None if why is None else SDKNameUnsupported(name, f"the tinker SDK's {name} is not in tinker_std: {why}")
