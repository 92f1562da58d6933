"""tinker-std: an open standard and reference implementation of the Tinker-style training API.

Write a training loop once against these names and run it on any backend::

    import tinker_std as ts
    svc = ts.ServiceClient(backend="mock")
    tc = svc.create_lora_training_client(base_model="mock/tiny", rank=8).result()
"""

from . import types
from .backend import AdapterState, Backend, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from .capabilities import Capabilities
from .checkpoints import CheckpointStore
from .client import (
    BackcompatSamplingClientFuture,
    BackcompatTrainingClientFuture,
    LossHandle,
    RestClient,
    SamplingClient,
    ServiceClient,
    TrainingClient,
)
from .errors import (
    APIError,
    APIStatusError,
    BackendValidationError,
    BadRequestError,
    ConflictError,
    ContextLengthError,
    CorruptCheckpointError,
    IncompatibleEnvironmentError,
    LimitExceededError,
    NonFiniteError,
    NotFoundError,
    RequestFailedError,
    StorageFullError,
    TinkerError,
    Unsupported,
)
from .futures import APIFuture
from .limits import Limits
from .sdk_names import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BillingError,
    ExperimentalWarning,
    InternalServerError,
    ModelInputChunk,
    OptimParams,
    PerDatumLossFn,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from .sdk_names import refuse as _refuse_sdk_name
from .types import (
    AdamOptimizerConfig,
    AdamParams,
    Checkpoint,
    CheckpointsListResponse,
    CheckpointType,
    Cursor,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    GetInfoResponse,
    GetServerCapabilitiesResponse,
    LoraConfig,
    LossFnType,
    ModelData,
    ModelID,
    ModelInput,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
    StopReason,
    SupportedModel,
    TensorData,
    TensorDtype,
    TrainingRun,
    TrainingRunsResponse,
)

SPEC_VERSION = "0.2"
__version__ = "0.1.0"


__all__ = [
    "SPEC_VERSION",
    "APIConnectionError",
    "APIError",
    "APIFuture",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdamOptimizerConfig",
    "AdamParams",
    "AdapterState",
    "AuthenticationError",
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "Backend",
    "BackendValidationError",
    "BadRequestError",
    "BillingError",
    "Capabilities",
    "Checkpoint",
    "CheckpointStore",
    "CheckpointType",
    "CheckpointsListResponse",
    "ConflictError",
    "ContextLengthError",
    "CorruptCheckpointError",
    "Cursor",
    "Datum",
    "EncodedTextChunk",
    "ExperimentalWarning",
    "ForwardBackwardOutput",
    "GetInfoResponse",
    "GetServerCapabilitiesResponse",
    "IncompatibleEnvironmentError",
    "InternalServerError",
    "LimitExceededError",
    "Limits",
    "LoraConfig",
    "LossFnType",
    "LossHandle",
    "ModelData",
    "ModelID",
    "ModelInput",
    "ModelInputChunk",
    "ModelSpec",
    "NonFiniteError",
    "NotFoundError",
    "OptimParams",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PerDatumLossFn",
    "PermissionDeniedError",
    "PromptProvenanceSpan",
    "RateLimitError",
    "RequestFailedError",
    "RestClient",
    "SampleRequest",
    "SampleResponse",
    "SampledProvenanceSpan",
    "SampledSequence",
    "SamplerSpec",
    "SamplingClient",
    "SamplingParams",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsResponse",
    "ServiceClient",
    "StopReason",
    "StorageFullError",
    "SupportedModel",
    "TensorData",
    "TensorDtype",
    "TinkerError",
    "Tokenizer",
    "TrainingClient",
    "TrainingRun",
    "TrainingRunsResponse",
    "UnprocessableEntityError",
    "Unsupported",
    "types",
]


def __getattr__(name: str) -> object:
    """SDK 0.38 names with no in-process meaning are refused by name (``sdk_names.REFUSED``)."""
    error = _refuse_sdk_name(name)
    if error is None:
        raise AttributeError(f"module 'tinker_std' has no attribute {name!r}")
    raise error
