"""LoRA adapters for the mock models (spec LORA).

An adapter holds, for every targeted linear module ``W`` of shape (out, in), a pair
``lora_A`` (rank, in) and ``lora_B`` (out, rank); the adapted module computes
``W x + scaling * B (A x)`` with ``scaling = LORA_ALPHA / rank`` and no dropout.

Targets: ``attn.q/k/v/o`` when ``train_attn``, ``mlp.gate/up/down`` when ``train_mlp`` and
``lm_head`` when ``train_unembed``. A fresh adapter has ``A`` drawn kaiming-uniform with
``a = sqrt(5)`` (the ``nn.Linear``/peft default, i.e. U(-1/sqrt(in), 1/sqrt(in))) from a
``torch.Generator`` seeded with ``lora.seed`` (a random seed when ``None``) and ``B = 0``, so it
leaves the model exactly equal to its base model. Parameter names are ``<module>.lora_A`` and
``<module>.lora_B``, in the fixed module order of ``ModelConfig.linear_shapes``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import torch

from tinker_std.types import LoraConfig

from .model import DTYPE, ModelConfig

__all__ = ["LoraAdapter", "LORA_ALPHA", "target_modules", "expected_shapes"]

LORA_ALPHA = 32.0

_GROUPS: dict[str, tuple[str, ...]] = {
    "train_attn": ("attn.q", "attn.k", "attn.v", "attn.o"),
    "train_mlp": ("mlp.gate", "mlp.up", "mlp.down"),
    "train_unembed": ("lm_head",),
}


def target_modules(lora: LoraConfig) -> tuple[str, ...]:
    """The linear modules that ``lora`` adapts, in model order."""
    return tuple(module for flag, modules in _GROUPS.items() if getattr(lora, flag) for module in modules)


def expected_shapes(lora: LoraConfig, model: ModelConfig) -> dict[str, tuple[int, int]]:
    """Parameter name -> shape of every adapter tensor for ``lora`` on ``model``."""
    shapes = model.linear_shapes()
    result: dict[str, tuple[int, int]] = {}
    for module in target_modules(lora):
        out_f, in_f = shapes[module]
        result[f"{module}.lora_A"] = (lora.rank, in_f)
        result[f"{module}.lora_B"] = (out_f, lora.rank)
    return result


class LoraAdapter:
    """The adapter tensors of one training model or sampler.

    ``params`` maps parameter name to a float64 leaf tensor; they require grad when the adapter is
    trainable (training models) and not otherwise (sampler snapshots).
    """

    def __init__(self, config: LoraConfig, params: Mapping[str, torch.Tensor]) -> None:
        self.config = config
        self.scaling = LORA_ALPHA / config.rank
        self.params: dict[str, torch.Tensor] = dict(params)

    @classmethod
    def fresh(cls, config: LoraConfig, model: ModelConfig) -> LoraAdapter:
        """A new trainable adapter: ``A`` kaiming-uniform from ``config.seed``, ``B`` zero."""
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        gen = torch.Generator().manual_seed(seed % 2**63)
        params: dict[str, torch.Tensor] = {}
        for name, shape in expected_shapes(config, model).items():
            tensor = torch.zeros(shape, dtype=DTYPE)
            if name.endswith(".lora_A"):
                torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=gen)
            params[name] = torch.nn.Parameter(tensor)
        return cls(config, params)

    @classmethod
    def from_tensors(
        cls, config: LoraConfig, model: ModelConfig, tensors: Mapping[str, torch.Tensor], trainable: bool
    ) -> LoraAdapter:
        """An adapter holding copies of ``tensors``; ``ValueError`` unless names and shapes match
        what ``config`` prescribes on ``model``."""
        expected = expected_shapes(config, model)
        if set(tensors) != set(expected):
            raise ValueError(f"adapter tensors {sorted(tensors)} do not match the LoRA config {sorted(expected)}")
        params: dict[str, torch.Tensor] = {}
        for name, shape in expected.items():
            tensor = tensors[name].detach().to(DTYPE).clone()
            if tuple(tensor.shape) != shape:
                raise ValueError(f"adapter tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
            params[name] = torch.nn.Parameter(tensor) if trainable else tensor
        return cls(config, params)

    def pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(A, B)`` of ``module``, or ``None`` when it is not adapted."""
        lora_a = self.params.get(f"{module}.lora_A")
        if lora_a is None:
            return None
        return lora_a, self.params[f"{module}.lora_B"]

    def snapshot(self) -> LoraAdapter:
        """A frozen copy: later changes to this adapter do not reach it (spec SMP-14)."""
        return LoraAdapter(self.config, {name: p.detach().clone() for name, p in self.params.items()})

    def parameters(self) -> list[torch.Tensor]:
        """The tensors in name order (what the optimizer updates)."""
        return list(self.params.values())
