"""The shared client layer: futures, ordering, chunking, validation and custom losses, written
once for every backend."""

from .backcompat import BackcompatSamplingClientFuture
from .loss_handle import LossHandle
from .rest import RestClient
from .sampling import SamplingClient
from .service import BackcompatTrainingClientFuture, ServiceClient
from .session import BackendSession
from .training import TrainingClient

__all__ = [
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "BackendSession",
    "LossHandle",
    "RestClient",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
]
