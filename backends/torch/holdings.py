"""What a ``TorchEngine`` holds: loaded base models, training models and samplers.

One ``LoadedBase`` per base-model name carries the Hugging Face model that every adapter on it
shares; a ``TrainingModel`` is one client's adapter (a named peft LoRA adapter on that model) with
its own ``torch.optim.AdamW``; a ``Sampler`` is fixed weights to sample from (the base alone, or a
frozen adapter copy). ``BaseModels`` finds, loads and keeps the base models and their tokenizers;
``TrainingModels`` keeps the training models, moving idle ones' state to files and back.
``engine.py`` creates and releases them; ``forward_pass.py``, ``multi_tenant.py`` and ``export.py``
read them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinker_std.backend import ModelSpec, SamplerSpec, Tokenizer
from tinker_std.errors import NotFoundError
from tinker_std.types import SupportedModel

from .models import BUILTIN_MODELS, load_causal_lm, load_tokenizer, model_context_length, resolve_model_path
from .offload import IdleStore

__all__ = ["BaseModels", "LoadedBase", "Sampler", "TrainingModel", "TrainingModels"]


@dataclass
class LoadedBase:
    """One loaded base model, shared by every adapter on it."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    vocab_size: int
    max_context_length: int


@dataclass
class TrainingModel:
    """One training client: adapter ``adapter`` on ``base``, its tensors ``params`` by stable name."""

    spec: ModelSpec
    base: LoadedBase
    adapter: str
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.AdamW


@dataclass(frozen=True)
class Sampler:
    """One sampler: ``base`` plus adapter ``adapter`` (``None``: the base model alone)."""

    spec: SamplerSpec
    base: LoadedBase
    adapter: str | None


class BaseModels:
    """The base models an engine serves: the built-ins (``tiny-llama`` first), then ``models``
    (names or local paths; any locally available causal LM can be used by name anyway), loaded on
    first use in ``dtype`` on ``device`` and handed to ``prepare`` (the placement's
    ``prepare_base``), with every context length capped at ``max_context_length``. ``tokenizer``,
    ``served`` and ``supported`` may run concurrently with one running engine call."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        models: Sequence[str],
        max_context_length: int | None,
        cache_dir: Path | None,
        prepare: Callable[[Any], None],
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.extra_models = list(dict.fromkeys(models))
        self.max_context_length = max_context_length
        self.cache_dir = cache_dir
        self.prepare = prepare
        self.loaded: dict[str, LoadedBase] = {}
        self._paths: dict[str, str] = {}
        self._tokenizers: dict[str, Any] = {}
        self._files_lock = threading.RLock()  # model paths and tokenizers (``tokenizer`` may run concurrently)

    def served(self) -> list[str]:
        """The listed models: the built-ins (``tiny-llama`` first), then ``models``."""
        return list(dict.fromkeys([*BUILTIN_MODELS, *self.extra_models]))

    def supported(self) -> list[SupportedModel]:
        """Every listed model with its maximum context length (loads configs, not weights)."""
        return [SupportedModel(model_name=name, max_context_length=self.context_length(name)) for name in self.served()]

    def tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model`` (``NotFoundError`` when it cannot be loaded offline)."""
        with self._files_lock:
            tok = self._tokenizers.get(base_model)
            if tok is None:
                tok = load_tokenizer(self.path(base_model))
                self._tokenizers[base_model] = tok
            return tok  # type: ignore[no-any-return]

    def path(self, base_model: str) -> str:
        """Where ``base_model``'s files are (``models.resolve_model_path``)."""
        with self._files_lock:
            path = self._paths.get(base_model)
            if path is None:
                path = resolve_model_path(base_model, self.served(), self.cache_dir)
                self._paths[base_model] = path
            return path

    def context_length(self, base_model: str) -> int:
        """``base_model``'s maximum context length, capped at ``max_context_length``."""
        recipe = BUILTIN_MODELS.get(base_model)
        if recipe is not None:
            cap = self.max_context_length
            return recipe.max_context_length if cap is None else min(recipe.max_context_length, cap)
        return model_context_length(self.path(base_model), self.max_context_length)

    def get(self, base_model: str) -> LoadedBase:
        """``base_model``, loaded on first use."""
        base = self.loaded.get(base_model)
        if base is None:
            path = self.path(base_model)
            model = load_causal_lm(path, self.dtype, self.device)
            head = model.get_output_embeddings()
            vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
            self.prepare(model)
            base = LoadedBase(
                name=base_model,
                path=path,
                model=model,
                tokenizer=self.tokenizer(base_model),
                vocab_size=vocab_size,
                max_context_length=self.context_length(base_model),
            )
            self.loaded[base_model] = base
        return base


class TrainingModels:
    """The training models by id. ``resident``: how many keep their adapter and AdamW state in
    memory when idle (``None``: all); after each ``optim_step`` the engine calls ``offload_idle``,
    which moves the least recently used others without an accumulated gradient to ``idle``
    (``offload.py``); ``get`` brings them back, bit for bit."""

    def __init__(self, idle: IdleStore, resident: int | None) -> None:
        self.models: dict[str, TrainingModel] = {}
        self.idle = idle
        self.resident = resident
        self._recent: OrderedDict[str, None] = OrderedDict()  # model ids, least recently used first

    def add(self, model: TrainingModel) -> None:
        """Register a new model (the most recently used)."""
        self.models[model.spec.model_id] = model
        self._recent[model.spec.model_id] = None

    def get(self, model_id: str) -> TrainingModel:
        """The model ``model_id``, its state back in memory if it was offloaded (``NotFoundError``
        for unknown or released ids)."""
        model = self.models.get(model_id)
        if model is None:
            raise NotFoundError(f"training model {model_id!r} does not exist (or was released)")
        if model_id in self.idle:
            self.idle.restore(model_id, model.params, model.optimizer)
        self._recent[model_id] = None
        self._recent.move_to_end(model_id)
        return model

    def pop(self, model_id: str) -> TrainingModel | None:
        """Forget ``model_id`` (and its offloaded files); ``None`` for unknown ids."""
        model = self.models.pop(model_id, None)
        self._recent.pop(model_id, None)
        self.idle.discard(model_id)
        return model

    def offload_idle(self) -> None:
        """Offload the least recently used models beyond ``resident`` that hold no gradient."""
        if self.resident is None:
            return
        resident = [m for m in self._recent if m not in self.idle]
        for model_id in resident[: max(len(resident) - self.resident, 0)]:
            model = self.models[model_id]
            if all(p.grad is None for p in model.params.values()):
                self.idle.offload(model_id, model.params, model.optimizer)

    def close(self) -> None:
        """Forget every model and delete the offloaded files."""
        self.idle.close()
        self._recent.clear()
        self.models.clear()
