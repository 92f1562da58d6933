"""Idle training models' adapter weights and AdamW state in files instead of memory.

A training model's live state between steps is its LoRA tensors and AdamW's two moments (and step
counters): 3 x 4 bytes per adapter parameter, 56 MiB for SmolLM2 at rank 16 with attention and MLP
adapters. With many tenants on one base model and most of them idle at any moment, that state is
most of what each extra tenant costs. ``IdleStore`` moves it out of memory:

* ``offload(key, params, optimizer)``: every tensor (weights, then each parameter's optimizer
  state) is written, as raw bytes, into one file ``<folder>/<key>.bin``; the parameters' ``.data``
  and the state entries become empty tensors, and the C allocator is asked to return the freed
  pages to the system (``malloc_trim``; glibc only, elsewhere a no-op);
* ``restore(key, params, optimizer)``: the file is memory-mapped (``torch.from_file``), each
  tensor copied back into a fresh tensor of its dtype, shape and device, and the file deleted.

The bytes go out and come back unchanged, so a model restored from its file computes exactly what
it would have computed had it stayed in memory (``tests/test_torch_offload.py``: bit-equal). The
engine decides when (``TorchEngine(resident_models=...)``): only models without an accumulated
gradient are ever offloaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["IdleStore", "release_free_memory"]

_ALIGN = 64  # byte alignment of each tensor in the file (any dtype's view stays aligned)


@dataclass(frozen=True)
class _Entry:
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: torch.device


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``; else nothing)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class IdleStore:
    """Files holding the state of offloaded training models, in ``folder`` (created on demand,
    removed by ``close``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._layouts: dict[str, list[_Entry]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._layouts

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}.bin"

    @staticmethod
    def _tensors(
        params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer
    ) -> list[tuple[torch.nn.Parameter, str | None]]:
        """Every tensor slot in a fixed order: ``(param, None)`` for a weight, ``(param, key)`` for
        a tensor of its optimizer state."""
        slots: list[tuple[torch.nn.Parameter, str | None]] = []
        for param in params.values():
            slots.append((param, None))
            state = optimizer.state.get(param, {})
            slots.extend((param, k) for k in sorted(state) if isinstance(state[k], torch.Tensor))
        return slots

    def offload(self, key: str, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """Move ``params`` and their ``optimizer`` state into ``key``'s file (see module doc)."""
        if key in self._layouts:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        slots = self._tensors(params, optimizer)
        layout: list[_Entry] = []
        offset = 0
        with open(self._file(key), "wb") as f:
            for param, state_key in slots:
                tensor = param.data if state_key is None else optimizer.state[param][state_key]
                raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                f.write(b"\0" * (-offset % _ALIGN))
                offset += -offset % _ALIGN
                raw.numpy().tofile(f)
                layout.append(_Entry(offset, raw.numel(), tensor.dtype, tuple(tensor.shape), tensor.device))
                offset += raw.numel()
        for (param, state_key), entry in zip(slots, layout, strict=True):
            empty = torch.empty(0, dtype=entry.dtype, device=entry.device)
            if state_key is None:
                param.data = empty
            else:
                optimizer.state[param][state_key] = empty
        self._layouts[key] = layout
        release_free_memory()

    def restore(self, key: str, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        """Bring ``key``'s tensors back from its file, bit for bit, and delete the file."""
        layout = self._layouts.pop(key, None)
        if layout is None:
            return
        path = self._file(key)
        size = max((e.offset + e.nbytes for e in layout), default=0)
        mapped = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8) if size else None
        for (param, state_key), entry in zip(self._tensors(params, optimizer), layout, strict=True):
            assert mapped is not None
            raw = mapped[entry.offset : entry.offset + entry.nbytes]
            tensor = raw.view(entry.dtype).reshape(entry.shape).to(entry.device, copy=True)
            if state_key is None:
                param.data = tensor
            else:
                optimizer.state[param][state_key] = tensor
        del mapped
        path.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        """Forget ``key`` and delete its file (a released model)."""
        if self._layouts.pop(key, None) is not None:
            self._file(key).unlink(missing_ok=True)

    def close(self) -> None:
        """Forget everything and remove ``folder``."""
        self._layouts.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
