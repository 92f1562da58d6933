"""The ``modal`` backend: the torch engine in Modal containers on cloud GPUs (docs/modal.md).

Modules: ``backend`` (the client side, ``ModalBackend``), ``app`` (the Modal app: image, class,
Volumes; imports ``modal``), ``service`` (what a container runs), ``wire`` (the compact payloads
both sides use), ``handles`` (deployed, ephemeral and offline ways to reach the class),
``settings`` (the app's options), ``errors``, ``cli`` (``tinker-std modal ...``).
This package imports without ``modal`` installed; constructing the backend then says what to install.
"""

from .backend import ModalBackend, ModalBackendBF16, ModalBackendFP32
from .errors import ContainerLostError, ModalCredentialsError, ModalNotInstalledError

__all__ = [
    "ModalBackend",
    "ModalBackendBF16",
    "ModalBackendFP32",
    "ContainerLostError",
    "ModalCredentialsError",
    "ModalNotInstalledError",
]
