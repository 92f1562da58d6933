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
    TrainingRun,
    TrainingRunsResponse,
)

SPEC_VERSION = "0.2"
__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "APIFuture",
    "AdamOptimizerConfig",
    "AdamParams",
    "AdapterState",
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "Backend",
    "BackendValidationError",
    "IncompatibleEnvironmentError",
    "BadRequestError",
    "Capabilities",
    "Checkpoint",
    "CheckpointStore",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "ConflictError",
    "ContextLengthError",
    "CorruptCheckpointError",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "GetInfoResponse",
    "GetServerCapabilitiesResponse",
    "LimitExceededError",
    "Limits",
    "LoraConfig",
    "LossFnType",
    "LossHandle",
    "ModelData",
    "ModelID",
    "ModelInput",
    "ModelSpec",
    "NonFiniteError",
    "NotFoundError",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PromptProvenanceSpan",
    "SampledProvenanceSpan",
    "RequestFailedError",
    "RestClient",
    "SampleRequest",
    "SampleResponse",
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
    "TinkerError",
    "Tokenizer",
    "TrainingClient",
    "TrainingRun",
    "TrainingRunsResponse",
    "Unsupported",
    "types",
]
