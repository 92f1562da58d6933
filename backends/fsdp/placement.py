"""``FsdpPlacement``: the torch engine's placement on one rank of a ``torch.distributed`` group.

What it changes in ``TorchEngine`` (see ``backends/torch/placement.py`` for the hooks):

* **Base model**: every decoder layer and then the Hugging Face model itself (the root: its
  embeddings, final norm and LM head, tied or not) become FSDP2 units (``fully_shard`` on a 1-D
  device mesh over all ranks), so each rank holds about 1/N of the frozen base. The root is the
  inner model, not a ``PeftModel`` wrapper: its pre-forward hook is what unshards the embedding
  (FSDP2 gathers a unit's parameters in that unit's own pre-forward hook), so sampling, which
  calls the inner model directly, works too.
* **LoRA adapters** are added AFTER sharding, at any time, as plain (replicated) tensors that FSDP
  does not manage. They are a tiny fraction of the model; keeping them whole on every rank means
  adapters can be created and released at any time, AdamW runs the same on every rank, and the
  gradient is reduced by one explicit all-reduce with ``SUM`` (so losses stay sums, spec LOSS-1;
  no FSDP gradient averaging to undo). Gradients stay per-rank partial sums while they
  accumulate and are summed over ranks right before they are used (``optim_step``, ``read_state``).
* **Data split**: each forward pass of the engine (one micro-batch) is split into contiguous,
  near-equal row ranges, one per rank; a rank with no rows runs an idle one-token pass (with a
  zero backward) so every rank joins every collective of the pass. Outputs are gathered in row
  order on every rank; ``loss:sum`` is the sum of the ranks' sums.
* **Checkpoints**: rank 0 opens the staging folder and commits it only after every rank reports
  success; the adapter (peft folder) is written by rank 0, the optimizer state by all ranks with
  ``torch.distributed.checkpoint`` (``optimizer.dcp/``).
* **Ids**: ``fsdp-<group token>-<counter>`` (``fsdp-sampler-...`` for samplers), identical on
  every rank because every rank executes the same calls in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tinker_std.checkpoints import CheckpointStore
from tinker_std.client.chunking import merge_outputs
from tinker_std.types import Datum, ForwardBackwardOutput, ParsedCheckpointTinkerPath

from ..torch import storage
from ..torch.placement import Placement
from .wire import ErrorRecord, pack, rebuild

__all__ = ["FsdpPlacement", "decoder_layers", "local_parameter_bytes"]


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model (classes named in ``_no_split_modules``)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        inner = getattr(model, "model", None)
        layers = list(getattr(inner, "layers", []))
    return layers


def local_parameter_bytes(model: torch.nn.Module, adapters: bool = False) -> int:
    """Bytes of parameter storage this process holds for ``model`` (the local shard of sharded
    parameters, all of an unsharded one): the base model's, or with ``adapters`` the LoRA tensors'."""
    total = 0
    for name, param in model.named_parameters():  # each parameter once, even when tied
        if ("lora_" in name) != adapters:
            continue
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total


class FsdpPlacement(Placement):
    """One rank's placement. The process group must already be initialised; ``token`` must be the
    same on every rank (it makes ids unique across groups)."""

    forced_batching = "serial"

    def __init__(self, device: torch.device, token: str) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self.is_writer = self.rank == 0
        self.mesh = init_device_mesh(device.type, (self.world_size,))
        self._token = token
        self._counter = itertools.count()
        # gloo reduces CPU tensors; NCCL needs them on the rank's GPU.
        self._comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- base model ----------------------------------------------------------------------------

    def prepare_base(self, model: Any) -> None:
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer, mesh=self.mesh)
        # FSDP2 keeps the root unsharded after forward by default; reshard it so that between
        # calls each rank holds only its shard of the embeddings and LM head too.
        fully_shard(model, mesh=self.mesh, reshard_after_forward=True)

    # -- forward passes --------------------------------------------------------------------------

    def rows(self, chunk: Sequence[Datum]) -> Sequence[Datum]:
        per_rank = -(-len(chunk) // self.world_size)
        return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]

    def idle_pass(self, model: Any, backward: bool) -> None:
        ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(backward):
            logits = model(input_ids=ids, use_cache=False).logits
            if backward and logits.requires_grad:
                (logits.sum() * 0.0).backward()

    def abandon_pass(self, logprobs: Sequence[torch.Tensor], backward: bool) -> None:
        if backward and logprobs and any(lp.requires_grad for lp in logprobs):
            # The same graph as the refused loss's backward, times zero: every rank meets the same
            # collectives and no gradient changes (the engine also restores it on failure).
            (torch.stack([lp.sum() for lp in logprobs if lp.requires_grad]).sum() * 0.0).backward()  # type: ignore[no-untyped-call]

    def gather(
        self, local: ForwardBackwardOutput | BaseException | None, chunk: Sequence[Datum]
    ) -> ForwardBackwardOutput:
        parts: list[ForwardBackwardOutput | BaseException | None] = [None] * self.world_size
        dist.all_gather_object(parts, local)
        failed = [p for p in parts if isinstance(p, BaseException)]
        if failed:  # every rank raises the same refusal, so none goes on to the next chunk alone
            raise failed[0]
        present = [p for p in parts if isinstance(p, ForwardBackwardOutput)]
        return merge_outputs(present, [len(p.loss_fn_outputs) for p in present])

    # -- gradients --------------------------------------------------------------------------------

    def _summed(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([t.detach().reshape(-1).to(self._comm_device, torch.float32) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view(t.shape).to(t.device, t.dtype))
            offset += t.numel()
        return out

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, summed in zip(params, self._summed(grads), strict=True):
            p.grad = summed

    def reduced_grads(self, params: Mapping[str, torch.nn.Parameter]) -> dict[str, torch.Tensor | None]:
        if not params:
            return {}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
        return dict(zip(params, self._summed(grads), strict=True))

    # -- checkpoints ------------------------------------------------------------------------------

    def _all_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self._comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def agree(self, failure: BaseException | None) -> None:
        ok = self._all_ok(failure is None)
        if failure is not None:
            raise failure
        if not ok:
            raise RuntimeError("another rank failed while writing; nothing was committed")

    @contextmanager
    def writing(
        self, store: CheckpointStore, path: ParsedCheckpointTinkerPath, overwrite: bool, meta: dict[str, Any]
    ) -> Iterator[Path]:
        """Rank 0 opens the store's staging folder and tells the others where it is; every rank
        writes; the folder is committed under its name only when every rank succeeded."""
        with ExitStack() as stack:
            box: list[str | ErrorRecord | None] = [None]
            failure: BaseException | None = None
            if self.rank == 0:
                try:
                    meta = {**meta, "world_size": self.world_size}
                    box[0] = str(stack.enter_context(store.writing(path, overwrite, meta)))
                except Exception as exc:  # e.g. ConflictError: every rank raises it
                    failure = exc
                    box[0] = pack(exc, self.rank)
            dist.broadcast_object_list(box, src=0)
            if failure is not None:
                raise failure
            if isinstance(box[0], ErrorRecord):
                raise rebuild(box[0])
            assert isinstance(box[0], str)
            try:
                yield Path(box[0])
            except BaseException:
                self._all_ok(False)
                raise
            if not self._all_ok(True):
                raise RuntimeError(f"another rank failed while writing {path.tinker_path}; nothing was committed")

    def write_optimizer(
        self, folder: Path, optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]
    ) -> None:
        from torch.distributed.checkpoint.state_dict_saver import save

        state = storage.optimizer_state(optimizer, params)
        flat = {f"{name}.{key}": value for name, entry in state.items() for key, value in entry.items()}
        save(flat, checkpoint_id=str(folder / storage.OPTIMIZER_DCP_DIR))

    # -- ids and lifetime -------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix.replace('torch', 'fsdp', 1)}-{self._token}-{next(self._counter)}"

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
