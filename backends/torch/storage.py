"""Checkpoint files of the torch backend.

A checkpoint folder (managed by ``tinker_std.checkpoints.CheckpointStore``, so writes are atomic)
holds ``checkpoint.json`` (metadata: ``base_model``, ``lora``, ``backend``, ``kind``) plus a
standard peft adapter, loadable by ``peft.PeftModel.from_pretrained(base, folder)``:

* ``adapter_model.safetensors``: the LoRA weights, float32, under peft's key names
  (``base_model.model.<module>.lora_A.weight``);
* ``adapter_config.json``: the ``peft.LoraConfig`` (rank, alpha 32, targets);

and, in ``save_state`` checkpoints only,

* ``optimizer.safetensors``: AdamW's state per parameter, as ``<name>.exp_avg``,
  ``<name>.exp_avg_sq`` and ``<name>.step`` (stable names, see ``adapters``), restored exactly;
  or, in checkpoints written by the FSDP backend, ``optimizer.dcp/``: the same entries as a
  ``torch.distributed.checkpoint`` folder (read here in one process, whatever world size wrote it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError
from tinker_std.types import CheckpointType, LoraConfig, ParsedCheckpointTinkerPath

from .adapters import delete_adapter, from_peft_key, peft_config, peft_key

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILE",
    "BACKEND",
    "OPTIMIZER_DCP_DIR",
    "OPTIMIZER_FILE",
    "OptimizerState",
    "metadata",
    "optimizer_state",
    "install_adapter",
    "read_adapter",
    "read_checkpoint_adapter",
    "read_checkpoint",
    "read_dcp",
    "read_optimizer",
    "restore_optimizer",
    "write_adapter",
    "write_optimizer",
]

BACKEND = "torch"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_DCP_DIR = "optimizer.dcp"
_MOMENTS = ("step", "exp_avg", "exp_avg_sq")

OptimizerState = dict[str, dict[str, torch.Tensor]]


def metadata(
    base_model: str, lora: LoraConfig, path: ParsedCheckpointTinkerPath, kind: CheckpointType
) -> dict[str, Any]:
    """The ``checkpoint.json`` fields of a ``kind`` checkpoint; ``BadRequestError`` if ``path`` is
    of the other kind."""
    if path.checkpoint_type != kind:
        raise BadRequestError("path", f"{path.tinker_path} is not a {kind} checkpoint path")
    return {"base_model": base_model, "lora": lora.model_dump(), "backend": BACKEND, "kind": kind}


def read_checkpoint(store: CheckpointStore, path: ParsedCheckpointTinkerPath) -> tuple[str, LoraConfig, Path]:
    """Base model, LoRA config and folder of a checkpoint written by this backend.

    ``NotFoundError`` when there is no checkpoint at ``path``; ``BadRequestError`` (field ``path``)
    when another backend wrote it."""
    meta = store.read_metadata(path)
    if meta.get("backend") != BACKEND:
        raise BadRequestError(
            "path", f"{path.tinker_path} was written by backend {meta.get('backend')!r}, not {BACKEND!r}"
        )
    return str(meta["base_model"]), LoraConfig.model_validate(meta["lora"]), store.directory(path)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def write_adapter(folder: Path, params: dict[str, torch.nn.Parameter], lora: LoraConfig, base_model: str) -> None:
    """Write ``params`` as a standard peft adapter folder (weights + ``adapter_config.json``)."""
    save_file({peft_key(name): _cpu(p).to(torch.float32) for name, p in params.items()}, str(folder / ADAPTER_FILE))
    peft_config(lora, base_model).save_pretrained(str(folder))


def read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors stored in ``folder`` keyed by stable name (CPU); ``FileNotFoundError``
    when absent, ``ValueError`` for a file that is not a LoRA adapter."""
    return {from_peft_key(key): tensor for key, tensor in load_file(str(folder / ADAPTER_FILE)).items()}


def optimizer_state(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> OptimizerState:
    """AdamW's per-parameter state keyed by stable name (CPU copies; parameters without state are left out)."""
    state: OptimizerState = {}
    for name, param in params.items():
        entry = optimizer.state.get(param)
        if entry:
            state[name] = {key: _cpu(entry[key]) for key in _MOMENTS}
    return state


def write_optimizer(folder: Path, optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> None:
    state = optimizer_state(optimizer, params)
    flat = {f"{name}.{key}": value for name, entry in state.items() for key, value in entry.items()}
    save_file(flat, str(folder / OPTIMIZER_FILE))


def read_optimizer(folder: Path) -> OptimizerState | None:
    """The optimizer state stored in ``folder``, or ``None`` when the checkpoint has none."""
    file = folder / OPTIMIZER_FILE
    if file.is_file():
        flat = load_file(str(file))
    elif (folder / OPTIMIZER_DCP_DIR).is_dir():
        flat = read_dcp(folder / OPTIMIZER_DCP_DIR)
    else:
        return None
    state: OptimizerState = {}
    for key, value in flat.items():
        name, _, moment = key.rpartition(".")
        if moment not in _MOMENTS:
            raise ValueError(f"unexpected optimizer entry {key!r}")
        state.setdefault(name, {})[moment] = value
    return state


def read_dcp(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``torch.distributed.checkpoint`` folder, read whole in this process (no
    process group needed; the world size that wrote it does not matter)."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    reader = FileSystemReader(str(folder))
    entries = reader.read_metadata().state_dict_metadata
    flat: dict[str, torch.Tensor] = {}
    for key, entry in entries.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise ValueError(f"unexpected non-tensor entry {key!r} in {folder}")
        flat[key] = torch.empty(entry.size, dtype=entry.properties.dtype)
    load(flat, storage_reader=reader, no_dist=True)
    return flat


def restore_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], state: OptimizerState
) -> None:
    """Install ``state`` into ``optimizer`` (which must be over ``params``), bit for bit."""
    unknown = set(state) - set(params)
    if unknown:
        raise ValueError(f"optimizer state for unknown parameters {sorted(unknown)}")
    for name, entry in state.items():
        param = params[name]
        missing = set(_MOMENTS) - set(entry)
        if missing:
            raise ValueError(f"optimizer state of {name} lacks {sorted(missing)}")
        optimizer.state[param] = {
            "step": entry["step"].to(torch.float32).clone(),
            "exp_avg": entry["exp_avg"].to(device=param.device, dtype=param.dtype).clone(),
            "exp_avg_sq": entry["exp_avg_sq"].to(device=param.device, dtype=param.dtype).clone(),
        }


def read_checkpoint_adapter(path: ParsedCheckpointTinkerPath, folder: Path) -> dict[str, torch.Tensor]:
    """``read_adapter`` of checkpoint ``path`` (in ``folder``); ``BadRequestError`` (field ``path``)
    when its files are not a valid adapter."""
    try:
        return read_adapter(folder)
    except (OSError, ValueError) as exc:
        raise BadRequestError("path", f"{path.tinker_path} is not a valid torch checkpoint: {exc}") from exc


def install_adapter(
    model: Any,
    base_name: str,
    adapter: str,
    params: Mapping[str, torch.nn.Parameter],
    tensors: Mapping[str, torch.Tensor],
    path: ParsedCheckpointTinkerPath | None,
) -> None:
    """Copy ``tensors`` (read from ``path``, or a training model's when ``None``) into the new
    adapter ``adapter``'s ``params`` on ``model`` (base model ``base_name``); on a mismatch delete
    the adapter and raise ``BadRequestError`` (field ``path``)."""
    problem = None
    if set(tensors) != set(params):
        problem = f"adapter tensors {sorted(set(tensors) ^ set(params))[:4]} do not match the LoRA config"
    else:
        bad = [n for n, p in params.items() if tuple(tensors[n].shape) != tuple(p.shape)]
        if bad:
            found, wanted = tuple(tensors[bad[0]].shape), tuple(params[bad[0]].shape)
            problem = f"adapter tensor {bad[0]} has shape {found}, expected {wanted}"
    if problem is not None:
        delete_adapter(model, adapter)
        where = path.tinker_path if path is not None else "the source model"
        raise BadRequestError("path", f"{where} does not fit base model {base_name!r}: {problem}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].detach().to(device=param.device, dtype=param.dtype))
