"""Many LoRA adapters on one Hugging Face model, through real ``peft`` (spec LORA).

Every training client and every sampler with adapter weights owns one named peft LoRA adapter
injected into the shared base model (``model.add_adapter`` of transformers' peft integration).
Exactly one adapter, or none (the base model), is active at a time; ``activate`` switches, and it
is the isolation mechanism for training: only the active adapter's tensors have
``requires_grad=True``, so a backward pass can only ever reach the active client's adapter. The
other adapters' accumulated ``.grad`` tensors stay where they are, untouched.

Adapter config (LORA-1..LORA-4): ``r = rank``, ``lora_alpha = 32``, no dropout, ``A`` kaiming-uniform
(``a = sqrt(5)``), ``B = 0``; targets ``q_proj, k_proj, v_proj, o_proj`` (``train_attn``),
``gate_proj, up_proj, down_proj`` (``train_mlp``) and ``lm_head`` (``train_unembed``; only the
output projection, even when its weight is tied to the embedding). Initialisation draws from the
CPU generator seeded with ``LoraConfig.seed`` under ``seeded_init.seeded_global_rng``, so the
caller's global random state is left alone and concurrent engines cannot interleave their draws.
Adapter tensors are always float32, whatever the base dtype.

Stable parameter names are ``<module path>.lora_A`` / ``<module path>.lora_B`` (for example
``model.layers.0.self_attn.q_proj.lora_A``), in module order; ``peft_key`` maps them to the keys
of a standard peft ``adapter_model.safetensors``.
"""

from __future__ import annotations

import secrets
from typing import Any

import torch

from tinker_std.types import LoraConfig

from .fast import merged, module_walk
from .models import quiet_transformers
from .seeded_init import seeded_global_rng

__all__ = [
    "LORA_ALPHA",
    "TARGET_GROUPS",
    "activate",
    "adapter_params",
    "add_adapter",
    "delete_adapter",
    "from_peft_key",
    "peft_config",
    "peft_key",
    "target_modules",
]

LORA_ALPHA = 32

#: ``LoraConfig`` flag -> the module names it adapts.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "train_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "train_mlp": ("gate_proj", "up_proj", "down_proj"),
    "train_unembed": ("lm_head",),
}

_PEFT_PREFIX = "base_model.model."


def target_modules(lora: LoraConfig) -> list[str]:
    """The module names ``lora`` adapts."""
    return [module for flag, modules in TARGET_GROUPS.items() if getattr(lora, flag) for module in modules]


def peft_config(lora: LoraConfig, base_model: str | None = None) -> Any:
    """The ``peft.LoraConfig`` of a tinker ``LoraConfig``."""
    import peft

    return peft.LoraConfig(
        r=lora.rank,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        init_lora_weights=True,
        target_modules=target_modules(lora),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )


def add_adapter(model: Any, name: str, lora: LoraConfig, seed: int | None) -> dict[str, torch.nn.Parameter]:
    """Inject a fresh adapter ``name`` (seeded by ``seed``, random when ``None``) and return its
    parameters by stable name. ``ValueError`` when the model has none of the target modules."""
    from peft.functional import cast_adapter_dtype

    config = peft_config(lora, getattr(model, "name_or_path", None))
    with seeded_global_rng(seed if seed is not None else secrets.randbits(63)), quiet_transformers():
        try:
            model.add_adapter(config, adapter_name=name)
        finally:
            module_walk.changed(model)
    cast_adapter_dtype(model, name, autocast_adapter_dtype=True)
    params = adapter_params(model, name)
    if not params:
        delete_adapter(model, name)
        raise ValueError(f"none of the LoRA target modules {target_modules(lora)} exist in this model")
    for param in params.values():
        if param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
    return params


def adapter_params(model: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """The tensors of adapter ``name`` keyed by stable name, in module order."""
    from peft.tuners.lora import LoraLayer

    params: dict[str, torch.nn.Parameter] = {}
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            layer: Any = module
            params[f"{path}.lora_A"] = layer.lora_A[name].weight
            params[f"{path}.lora_B"] = layer.lora_B[name].weight
    return params


def activate(model: torch.nn.Module, name: str | None, trainable: bool) -> None:
    """Make adapter ``name`` the only active one (``None``: the plain base model).

    With ``trainable`` its tensors require grad; every other adapter's tensors never do.
    """
    for layer in module_walk.tuner_layers(model):
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name, inference_mode=not trainable)


def delete_adapter(model: Any, name: str) -> None:
    """Remove adapter ``name`` from every layer (a no-op for an unknown name), and its merged
    sampling weights (``merged.py``)."""
    merged.forget(model, name)
    if name in getattr(model, "peft_config", {}):
        try:
            with quiet_transformers():
                model.delete_adapter(name)
        finally:
            module_walk.changed(model)


def peft_key(stable_name: str) -> str:
    """The key of a stable parameter name in a peft ``adapter_model.safetensors``."""
    return f"{_PEFT_PREFIX}{stable_name}.weight"


def from_peft_key(key: str) -> str:
    """The inverse of ``peft_key``; ``ValueError`` for a key that is not a LoRA A/B weight."""
    if not (key.startswith(_PEFT_PREFIX) and key.endswith((".lora_A.weight", ".lora_B.weight"))):
        raise ValueError(f"{key!r} is not a LoRA weight key of a peft adapter file")
    return key[len(_PEFT_PREFIX) : -len(".weight")]
