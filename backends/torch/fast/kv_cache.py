"""A key/value cache for the decode loop that grows in place instead of by concatenation.

transformers' ``DynamicCache`` appends each step's keys and values with ``torch.cat``, copying
every layer's whole cache once per generated token (on SmolLM2, 30 layers x 2 tensors per step, a
few percent of a decode step). ``growing_cache(reserve)`` returns a ``Cache`` whose layers keep
their keys and values in buffers with ``reserve`` spare positions: a step writes its new
positions into the buffer and the layer's ``keys`` / ``values`` are views of the filled part,
with the same values, shapes and dtype as ``DynamicCache`` would hold (the attention reads them
through their strides). Selecting batch rows (``batch_select_indices``) copies the buffers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["growing_cache"]


class _GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A ``DynamicLayer`` whose ``keys`` / ``values`` are views of preallocated buffers."""

    def __init__(self, reserve: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reserve = reserve
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        stop = length + key_states.shape[-2]
        if self._key_buffer is None or self._value_buffer is None or stop > self._key_buffer.shape[-2]:
            self._key_buffer = self._grown(self.keys if length else None, key_states, stop)
            self._value_buffer = self._grown(self.values if length else None, value_states, stop)
        self._key_buffer[..., length:stop, :] = key_states
        self._value_buffer[..., length:stop, :] = value_states
        self.keys = self._key_buffer[..., :stop, :]
        self.values = self._value_buffer[..., :stop, :]
        return self.keys, self.values

    def _grown(self, old: torch.Tensor | None, new: torch.Tensor, stop: int) -> torch.Tensor:
        buffer = new.new_empty((*new.shape[:-2], stop + self.reserve, new.shape[-1]))
        if old is not None:
            buffer[..., : old.shape[-2], :] = old
        return buffer

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.get_seq_length()
        if length > 0 and self._key_buffer is not None and self._value_buffer is not None:
            # ``index_select``: the same rows as ``buffer[indices, ...]``, about 6x faster on CPU
            self._key_buffer = self._key_buffer.index_select(0, indices)
            self._value_buffer = self._value_buffer.index_select(0, indices)
            self.keys = self._key_buffer[..., :length, :]
            self.values = self._value_buffer[..., :length, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._key_buffer = self._value_buffer = None  # ``keys`` / ``values`` are plain tensors again

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def growing_cache(layers: int, reserve: int) -> Cache:
    """A cache of ``layers`` decoder layers, each keeping room for ``reserve`` more positions
    than its first update brings (it grows again, by copying, if that is not enough)."""
    return Cache(layers=[_GrowingLayer(reserve) for _ in range(layers)])
