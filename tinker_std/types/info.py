"""Model information and server capabilities."""

from __future__ import annotations

from typing import Literal

from ._base import ResponseModel
from .training import AdamOptimizerConfig

__all__ = ["ModelData", "GetInfoResponse", "SupportedModel", "GetServerCapabilitiesResponse"]


class ModelData(ResponseModel):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(ResponseModel):
    """What a training client is: its model id, base model and LoRA rank."""

    type: Literal["get_info"] | None = None
    model_data: ModelData
    model_id: str
    optimizer_config: AdamOptimizerConfig = AdamOptimizerConfig()
    is_lora: bool | None = True
    lora_rank: int | None = None
    model_name: str | None = None


class SupportedModel(ResponseModel):
    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = True
    sampleable: bool | None = True


class GetServerCapabilitiesResponse(ResponseModel):
    supported_models: list[SupportedModel]
