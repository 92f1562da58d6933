"""Training request and response types: optimizer params, LoRA config, outputs, save responses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ._base import RequestModel, ResponseModel
from .tensor_data import TensorData

__all__ = [
    "AdamParams",
    "AdamOptimizerConfig",
    "LoraConfig",
    "ForwardBackwardOutput",
    "OptimStepResponse",
    "SaveWeightsResponse",
    "SaveWeightsForSamplerResponse",
    "LossFnType",
    "LOSS_FN_TYPES",
]

LossFnType = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"]
LOSS_FN_TYPES: tuple[str, ...] = (
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
)


class AdamParams(RequestModel):
    """Hyperparameters of one AdamW step (spec OPT-1..OPT-6); the defaults are tinker's."""

    learning_rate: float = Field(default=1e-4, ge=0.0, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-12, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    grad_clip_norm: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


class AdamOptimizerConfig(RequestModel):
    """The optimizer family of a training client; AdamW is the only one in v0.1."""

    type: Literal["adamw"] = "adamw"


class LoraConfig(RequestModel):
    """Which LoRA adapters a training client trains (spec LORA-1..LORA-5)."""

    rank: int = Field(ge=1)
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True

    @field_validator("train_attn")
    @classmethod
    def _at_least_one(cls, value: bool, info: object) -> bool:
        data = getattr(info, "data", {})
        if not (value or data.get("train_mlp", True) or data.get("train_unembed", True)):
            raise ValueError("at least one of train_mlp, train_attn, train_unembed must be true")
        return value


class ForwardBackwardOutput(ResponseModel):
    """Result of ``forward`` / ``forward_backward``.

    ``loss_fn_outputs`` has one dict per datum, in input order, each with ``"logprobs"`` shaped
    like that datum's ``target_tokens``. ``metrics`` keys are ``name:reduction`` and always include
    ``loss:sum``. There is deliberately no ``.loss`` attribute (as in tinker).
    """

    loss_fn_output_type: str = "TensorData"
    loss_fn_outputs: list[dict[str, TensorData]]
    metrics: dict[str, float] = {}

    @field_validator("metrics")
    @classmethod
    def _metric_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if key.count(":") != 1:
                raise ValueError(f"metric key {key!r} must have the form name:reduction")
        return value


class OptimStepResponse(ResponseModel):
    """Result of ``optim_step``; metrics include ``grad_norm:max`` (norm before clipping) and ``step:max``."""

    metrics: dict[str, float] | None = None


class SaveWeightsResponse(ResponseModel):
    """Result of ``save_state``: a ``tinker://<run>/weights/<name>`` path."""

    path: str
    type: Literal["save_weights"] | None = None


class SaveWeightsForSamplerResponse(ResponseModel):
    """Result of ``save_weights_for_sampler``: a ``tinker://<run>/sampler_weights/<name>`` path."""

    path: str
    type: Literal["save_weights_for_sampler"] | None = None
