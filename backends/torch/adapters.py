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
CPU generator seeded with ``LoraConfig.seed`` inside ``torch.random.fork_rng``, so the caller's
global random state is left alone. Adapter tensors are always float32, whatever the base dtype.

Stable parameter names are ``<module path>.lora_A`` / ``<module path>.lora_B`` (for example
``model.layers.0.self_attn.q_proj.lora_A``), in module order; ``peft_key`` maps them to the keys
of a standard peft ``adapter_model.safetensors``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from tinker_std.types import LoraConfig

from . import merged, module_walk
from .models import quiet_transformers

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
    "RowSegments",
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


def _tuner_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in module_walk.modules(model) if isinstance(module, BaseTunerLayer)]


def add_adapter(model: Any, name: str, lora: LoraConfig, seed: int | None) -> dict[str, torch.nn.Parameter]:
    """Inject a fresh adapter ``name`` (seeded by ``seed``, random when ``None``) and return its
    parameters by stable name. ``ValueError`` when the model has none of the target modules."""
    from peft.functional import cast_adapter_dtype

    config = peft_config(lora, getattr(model, "name_or_path", None))
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed if seed is not None else secrets.randbits(63))
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
    for layer in _tuner_layers(model):
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


#: ``(start, stop, adapter, length)``: batch rows ``start:stop`` go through ``adapter`` (``None``: no
#: adapter) at their first ``length`` positions (``None``: all). Positions past ``length`` are padding
#: for those rows; leaving them out keeps the adapter's matrix products the shapes they have when
#: the rows run alone, so the results are the same bit for bit, not just within rounding.
Segment = tuple[int, int, str | None, int | None]


class RowSegments:
    """Per-row adapter selection for a mixed batch: which adapter each contiguous run of batch
    rows uses. Installed on a model with ``per_row_adapters``; ``segments`` may be replaced
    between forward passes (the decode loop drops finished rows). Segments must tile the batch:
    the first starts at row 0 and each starts where the previous one stops."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)

    @property
    def segments(self) -> list[Segment]:
        return self._segments

    @segments.setter
    def segments(self, segments: Sequence[Segment]) -> None:
        row = 0
        for start, stop, _, _ in segments:
            if start != row or stop < start:
                raise ValueError(f"segments must tile the batch in order; got {list(segments)}")
            row = stop
        self._segments = list(segments)
        self.sizes = [stop - start for start, stop, _, _ in segments]


def _segment_delta_hook(state: RowSegments) -> Any:
    """A forward hook for one peft LoRA ``Linear`` whose adapters are disabled (so its output is
    ``base_layer(x)``): adds ``lora_B(lora_A(x[rows])) * scaling`` of each segment's adapter to
    those rows. Same operations, in the same order, as peft's single-adapter forward.

    The per-segment deltas are joined with one ``cat`` (whose backward is a cheap split) rather than
    written into slices of the output, which would zero-fill a full-size gradient per segment."""

    def hook(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not any(name is not None and name in module.lora_A for _, _, name, _ in state.segments):
            return output
        x = inputs[0]
        pieces: list[torch.Tensor | None] = []
        dtype: torch.dtype | None = None
        for (_, _, name, length), rows in zip(state.segments, x.split(state.sizes), strict=True):
            if name is None or name not in module.lora_A:
                pieces.append(None)
                continue
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            dtype = lora_a.weight.dtype
            pad = 0 if length is None or rows.dim() < 3 else rows.shape[1] - length
            if pad > 0:
                rows = rows[:, :length]
            delta = lora_b(lora_a(rows.to(dtype))) * module.scaling[name]
            pieces.append(torch.nn.functional.pad(delta, (0, 0, 0, pad)) if pad > 0 else delta)
        assert dtype is not None
        full = [
            piece if piece is not None else output.new_zeros((size, *output.shape[1:]), dtype=dtype)
            for piece, size in zip(pieces, state.sizes, strict=True)
        ]
        return (output + torch.cat(full)).to(output.dtype)

    return hook


@contextmanager
def per_row_adapters(
    model: torch.nn.Module,
    segments: Sequence[Segment],
    trainable: Sequence[dict[str, torch.nn.Parameter]] = (),
    fused: bool = False,
) -> Iterator[RowSegments]:
    """Run ``model`` on a mixed batch: rows ``start:stop`` of every LoRA layer's input use that
    segment's adapter, other rows none. The parameters in ``trainable`` require grad for the
    duration (rows are independent, so each adapter's gradient comes from its own rows only);
    every other adapter tensor does not. With ``fused``, layers that allow it compute each
    segment as ``lora_linear`` does for one adapter (``lora_linear.segment_forward``: the bits of
    a single-adapter pass with ``fused_lora_linears``); the others, and all without ``fused``,
    as peft does. On exit all adapters are disabled and frozen again, so callers ``activate``
    before the next single-adapter pass."""
    from peft.tuners.lora import LoraLayer

    from . import lora_linear

    state = RowSegments(segments)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    handles = []
    switched: list[Any] = []
    hook = _segment_delta_hook(state)
    try:
        for layer in _tuner_layers(model):
            layer.enable_adapters(False)
        for params in trainable:
            for param in params.values():
                param.requires_grad_(True)
        for layer in layers:
            forward = lora_linear.segment_forward(layer, state, lambda m, x, out: hook(m, (x,), out)) if fused else None
            if forward is not None:
                layer.forward = forward
                switched.append(layer)
            else:
                handles.append(layer.register_forward_hook(hook))
        yield state
    finally:
        for layer in switched:
            layer.__dict__.pop("forward", None)
        for handle in handles:
            handle.remove()
        for params in trainable:
            for param in params.values():
                param.requires_grad_(False)
