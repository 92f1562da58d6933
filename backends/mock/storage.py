"""Checkpoint files of the mock backend.

A checkpoint folder (managed by ``tinker_std.checkpoints.CheckpointStore``) holds
``checkpoint.json`` (metadata: ``base_model``, ``lora``, ``backend``, ``kind``) plus:

* ``adapter.pt``: ``{parameter name: tensor}``, the LoRA weights (every checkpoint);
* ``optimizer.pt``: ``{parameter name: {"step", "exp_avg", "exp_avg_sq"}}``, AdamW's state for
  every parameter that has one (``save_state`` checkpoints only).

Files are written with ``torch.save`` and read back with ``torch.load(weights_only=True)``.
Restoring the optimizer state puts back the exact tensors, so training continues bit-identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError
from tinker_std.types import CheckpointType, LoraConfig, ParsedCheckpointTinkerPath

from .lora import LoraAdapter
from .model import model_config

__all__ = [
    "ADAPTER_FILE",
    "OPTIMIZER_FILE",
    "metadata",
    "read_checkpoint",
    "write_adapter",
    "read_adapter",
    "write_optimizer",
    "read_optimizer",
    "restore_optimizer",
    "optimizer_state",
]

ADAPTER_FILE = "adapter.pt"
OPTIMIZER_FILE = "optimizer.pt"

OptimizerState = dict[str, dict[str, torch.Tensor]]


def metadata(
    base_model: str, lora: LoraConfig, path: ParsedCheckpointTinkerPath, kind: CheckpointType
) -> dict[str, Any]:
    """The ``checkpoint.json`` fields of a ``kind`` checkpoint; ``BadRequestError`` if ``path`` is
    of the other kind (``save_state`` writes ``weights/``, ``save_weights_for_sampler`` ``sampler_weights/``)."""
    if path.checkpoint_type != kind:
        raise BadRequestError("path", f"{path.tinker_path} is not a {kind} checkpoint path")
    return {"base_model": base_model, "lora": lora.model_dump(), "backend": "mock", "kind": kind}


def read_checkpoint(
    store: CheckpointStore, path: ParsedCheckpointTinkerPath, trainable: bool
) -> tuple[str, LoraAdapter]:
    """Base model and adapter of a checkpoint written by this backend.

    ``NotFoundError`` when there is no checkpoint at ``path``; ``BadRequestError`` when it was
    written by another backend or does not match its own LoRA config."""
    meta = store.read_metadata(path)
    if meta.get("backend") != "mock":
        raise BadRequestError("path", f"{path.tinker_path} was written by backend {meta.get('backend')!r}")
    base_model = str(meta["base_model"])
    lora = LoraConfig.model_validate(meta["lora"])
    tensors = read_adapter(store.directory(path))
    try:
        adapter = LoraAdapter.from_tensors(lora, model_config(base_model), tensors, trainable)
    except ValueError as exc:
        raise BadRequestError("path", f"{path.tinker_path} is not a valid mock checkpoint: {exc}") from exc
    return base_model, adapter


def write_adapter(folder: Path, adapter: LoraAdapter) -> None:
    torch.save({name: p.detach().clone() for name, p in adapter.params.items()}, folder / ADAPTER_FILE)


def read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors stored in ``folder``; ``FileNotFoundError`` when absent."""
    tensors: dict[str, torch.Tensor] = torch.load(folder / ADAPTER_FILE, weights_only=True)
    return tensors


def optimizer_state(optimizer: torch.optim.Optimizer, adapter: LoraAdapter) -> OptimizerState:
    """AdamW's per-parameter state keyed by parameter name (copies; parameters without state are left out)."""
    state: OptimizerState = {}
    for name, param in adapter.params.items():
        entry = optimizer.state.get(param)
        if entry:
            state[name] = {key: entry[key].detach().clone() for key in ("step", "exp_avg", "exp_avg_sq")}
    return state


def write_optimizer(folder: Path, optimizer: torch.optim.Optimizer, adapter: LoraAdapter) -> None:
    torch.save(optimizer_state(optimizer, adapter), folder / OPTIMIZER_FILE)


def read_optimizer(folder: Path) -> OptimizerState | None:
    """The optimizer state stored in ``folder``, or ``None`` when the checkpoint has none."""
    file = folder / OPTIMIZER_FILE
    if not file.is_file():
        return None
    state: OptimizerState = torch.load(file, weights_only=True)
    return state


def restore_optimizer(optimizer: torch.optim.Optimizer, adapter: LoraAdapter, state: OptimizerState) -> None:
    """Install ``state`` into ``optimizer`` (which must be over ``adapter``'s parameters)."""
    unknown = set(state) - set(adapter.params)
    if unknown:
        raise ValueError(f"optimizer state for unknown parameters {sorted(unknown)}")
    for name, entry in state.items():
        param = adapter.params[name]
        optimizer.state[param] = {
            "step": entry["step"].clone(),
            "exp_avg": entry["exp_avg"].to(param.dtype).clone(),
            "exp_avg_sq": entry["exp_avg_sq"].to(param.dtype).clone(),
        }
