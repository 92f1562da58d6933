"""``modules(model)``: a model's modules as a list, walked once per change of its structure.

The engine's per-request setup (packing the frozen linears, switching LoRA layers to fused or
merged forwards, activating an adapter) needs every module of the base model, a few thousand
for a 30-layer model with adapters, several times per request: tens of milliseconds per call on
the CPU. After loading, only adapters add or remove modules, and ``adapters.add_adapter`` /
``delete_adapter`` call ``changed``; a model they never touched is walked every time.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["changed", "modules", "tuner_layers"]

_ATTRIBUTE = "_tinker_std_structure"
_WALKS: weakref.WeakKeyDictionary[Any, tuple[int, list[torch.nn.Module]]] = weakref.WeakKeyDictionary()


def changed(model: Any) -> None:
    """Record that modules were added to or removed from ``model``."""
    setattr(model, _ATTRIBUTE, getattr(model, _ATTRIBUTE, 0) + 1)


def modules(model: Any) -> list[torch.nn.Module]:
    """``list(model.modules())``, from a cache kept while ``changed`` is not called."""
    version = getattr(model, _ATTRIBUTE, None)
    if version is None:
        return list(model.modules())
    cached = _WALKS.get(model)
    if cached is None or cached[0] != version:
        cached = (version, list(model.modules()))
        _WALKS[model] = cached
    return cached[1]


def tuner_layers(model: torch.nn.Module) -> list[Any]:
    """``model``'s peft tuner layers (every LoRA layer), in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in modules(model) if isinstance(module, BaseTunerLayer)]
