"""The ``tinker`` backend: any server that speaks the Tinker protocol, driven through the official
``tinker`` SDK (installed with the ``server`` extra).

Modules: ``backend`` (``TinkerBackend`` and the loopback variants ``TinkerMockBackend`` /
``TinkerTorchBackend`` that CI runs the conformance suite through), ``convert`` (tinker-std types
<-> SDK types), ``errors`` (the SDK's errors -> tinker-std's, and this backend's own),
``checkpoints`` (checkpoint management through the SDK's ``RestClient``), ``local`` (``serve=``:
a tinker-std server on 127.0.0.1 in this process). Importing this package does not import the SDK.
"""

from .backend import PROTOCOL_CAPABILITIES, TinkerBackend, TinkerMockBackend, TinkerTorchBackend
from .errors import (
    TinkerAuthenticationError,
    TinkerCredentialsError,
    TinkerSdkMissingError,
    TinkerServerUnreachableError,
)

__all__ = [
    "PROTOCOL_CAPABILITIES",
    "TinkerBackend",
    "TinkerMockBackend",
    "TinkerTorchBackend",
    "TinkerAuthenticationError",
    "TinkerCredentialsError",
    "TinkerSdkMissingError",
    "TinkerServerUnreachableError",
]
