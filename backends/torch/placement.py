"""``Placement``: where the torch engine's work runs, the seam between one process and many ranks.

``TorchEngine`` asks its placement a handful of questions and otherwise runs the same code
whatever the placement is:

* ``prepare_base``: what to do to a freshly loaded base model (nothing here; FSDP shards it);
* ``rows``: which rows of one forward pass this process computes (all of them here; a rank its share);
* ``idle_pass``: what a process with no rows in a pass does (nothing here; a rank must still join
  the pass's collectives);
* ``gather``: the pass's output from this process's part (the part itself here);
* ``reduce_grads`` / ``reduced_grads``: the accumulated gradient over all processes (in place, or a
  copy) before it is used (``optim_step``, ``read_state``);
* ``writing`` / ``is_writer`` / ``write_optimizer``: how a checkpoint folder is written;
* ``new_id``: model and sampler ids, which every rank must agree on.

``SingleProcess`` is the placement of the plain torch backend: every hook is the identity, so the
engine's behaviour is exactly that of a single process. The FSDP backend supplies another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from tinker_std.backend import new_model_id
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import Datum, ForwardBackwardOutput, ParsedCheckpointTinkerPath

from . import storage
from .batching import BatchingMode

__all__ = ["Placement", "SingleProcess"]


class Placement:
    """The single-process placement; subclasses override the hooks for ranks (see module doc)."""

    #: Whether this process writes the checkpoint files every process would otherwise write alike.
    is_writer: bool = True
    #: The ``batching`` mode the engine must use (``None``: the caller's choice).
    forced_batching: BatchingMode | None = None

    def prepare_base(self, model: Any) -> None:
        """Called once per base model, after loading and before any adapter is added."""

    def rows(self, chunk: Sequence[Datum]) -> Sequence[Datum]:
        """The rows of one forward pass over ``chunk`` that this process computes."""
        return chunk

    def idle_pass(self, model: Any, backward: bool) -> None:
        """Run in place of a pass when ``rows`` is empty."""

    def gather(
        self, local: ForwardBackwardOutput | BaseException | None, chunk: Sequence[Datum]
    ) -> ForwardBackwardOutput:
        """The output of the whole pass over ``chunk``, given this process's part; a part that is
        an exception (a refusal after the forward, FB-15) is raised."""
        if isinstance(local, BaseException):
            raise local
        assert local is not None
        return local

    def agree(self, failure: BaseException | None) -> None:
        """Raise ``failure`` here, and on every other process something that says one failed, so
        that no process goes on into the next collective alone (a single process: raise it)."""
        if failure is not None:
            raise failure

    def abandon_pass(self, logprobs: Sequence[torch.Tensor], backward: bool) -> None:
        """Called when this process's pass is refused after its forward (a non-finite loss, FB-15)
        and before its backward: with ranks, the others still wait in this pass's backward
        collectives, so the refusing rank runs a backward that adds exactly zero."""

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Make each ``.grad`` the gradient accumulated over all processes (in place)."""

    def reduced_grads(self, params: Mapping[str, torch.nn.Parameter]) -> dict[str, torch.Tensor | None]:
        """The accumulated gradients over all processes, leaving ``.grad`` untouched."""
        return {name: p.grad for name, p in params.items()}

    def writing(
        self, store: CheckpointStore, path: ParsedCheckpointTinkerPath, overwrite: bool, meta: dict[str, Any]
    ) -> AbstractContextManager[Path]:
        """A folder to write the checkpoint into, committed atomically on success."""
        return store.writing(path, overwrite, meta)

    def write_optimizer(
        self, folder: Path, optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]
    ) -> None:
        storage.write_optimizer(folder, optimizer, params)

    def new_id(self, prefix: str) -> str:
        return new_model_id(prefix)

    def close(self) -> None:
        """Release what the placement holds (process groups)."""


class SingleProcess(Placement):
    """Everything in this process (the torch backend)."""
