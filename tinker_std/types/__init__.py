"""Wire types of tinker-std, field-compatible with ``tinker.types`` (0.38) where shared."""

from .checkpoint import (
    Checkpoint,
    CheckpointsListResponse,
    CheckpointType,
    Cursor,
    ParsedCheckpointTinkerPath,
    TrainingRun,
    TrainingRunsResponse,
)
from .datum import LOSS_INPUT_DTYPES, Datum, TensorLike
from .info import GetInfoResponse, GetServerCapabilitiesResponse, ModelData, SupportedModel
from .model_input import EncodedTextChunk, ModelInput, TokensLike
from .provenance import PromptProvenanceSpan, ProvenanceSpan, ProvenanceSpans, SampledProvenanceSpan
from .sampling import (
    TOPK_PAD_LOGPROB,
    TOPK_PAD_TOKEN,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    StopReason,
)
from .tensor_data import TensorData, TensorDtype
from .training import (
    LOSS_FN_TYPES,
    AdamOptimizerConfig,
    AdamParams,
    ForwardBackwardOutput,
    LoraConfig,
    LossFnType,
    OptimStepResponse,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
)

ModelID = str

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "GetInfoResponse",
    "GetServerCapabilitiesResponse",
    "LOSS_FN_TYPES",
    "LOSS_INPUT_DTYPES",
    "LoraConfig",
    "LossFnType",
    "ModelData",
    "ModelID",
    "ModelInput",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PromptProvenanceSpan",
    "ProvenanceSpan",
    "ProvenanceSpans",
    "SampledProvenanceSpan",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsResponse",
    "StopReason",
    "SupportedModel",
    "TOPK_PAD_LOGPROB",
    "TOPK_PAD_TOKEN",
    "TensorData",
    "TensorDtype",
    "TensorLike",
    "TokensLike",
    "TrainingRun",
    "TrainingRunsResponse",
]
