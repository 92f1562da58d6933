"""``LossHandle``: the tinker SDK 0.38's traced per-datum custom loss, run by the client layer.

In the SDK, ``ServiceClient.create_custom_loss(fn, input_ranks)`` traces ``fn(logprobs, *inputs)
-> (scalar loss, metrics)`` with ``torch.fx`` into a ``LossHandle``; ``forward_backward_custom``
takes the handle in place of a ``(data, logprobs_list)`` callable. A handle without ``loss_id``
runs on the client: its graph is applied to each datum's logprobs and the ``loss_fn_inputs`` it
names, the per-datum losses are summed, and metrics are summed over the data (``:sum``) or
averaged (``:mean``) — then the surrogate trick of FB-9 applies as for any custom loss.

tinker-std runs every handle that way in process (the SDK's handles included, duck-typed). A
handle with a ``loss_id`` names a loss uploaded to a server, which an in-process backend does not
have: a ``BadRequestError`` naming ``loss_fn``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadRequestError
from ..types import Datum

if TYPE_CHECKING:
    import torch

    from .custom_loss import CustomLossFn

__all__ = ["LossHandle", "as_loss_fn", "is_loss_handle"]


@dataclass(frozen=True)
class LossHandle:
    """A traced custom loss (field for field the SDK's ``tinker.LossHandle``).

    ``inputs``: ``logprobs`` first, then the ``loss_fn_inputs`` keys the loss reads, in the order
    it takes them, each an object with ``name`` and ``rank``. ``graph``: the callable that runs
    (a ``torch.fx.GraphModule`` in the SDK), ``graph(logprobs, *inputs) -> (loss, metrics)``."""

    name: str
    inputs: tuple[Any, ...]
    session_id: str
    graph: Any = field(repr=False, compare=False)
    loss_id: str | None = None

    @property
    def key(self) -> str:
        """Identifies the traced loss (the SDK's digest of the graph's code and the inputs)."""
        digest = hashlib.sha256(str(getattr(self.graph, "code", repr(self.graph))).encode())
        digest.update(repr(self.inputs).encode())
        return digest.hexdigest()

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in the order it takes them."""
        return tuple(str(loss_input.name) for loss_input in self.inputs[1:])


def is_loss_handle(value: Any) -> bool:
    """A tinker-std or tinker SDK ``LossHandle`` (anything with its ``graph``, ``inputs`` and ``loss_id``)."""
    return isinstance(value, LossHandle) or all(hasattr(value, a) for a in ("graph", "inputs", "loss_id", "name"))


def check_handle_inputs(handle: Any, data: list[Datum]) -> None:
    """Every datum has each input the loss reads at its declared rank (``logprobs``: the rank of
    ``target_tokens``); else a ``BadRequestError`` naming the datum's field."""
    logprobs, *inputs = handle.inputs
    for i, datum in enumerate(data):
        for loss_input, key in [(logprobs, "target_tokens"), *((x, str(x.name)) for x in inputs)]:
            if key not in datum.loss_fn_inputs:
                raise BadRequestError(f"data[{i}].loss_fn_inputs.{key}", f"missing; loss {handle.name!r} takes {key!r}")
            rank = len(datum.loss_fn_inputs[key].resolved_shape)
            if rank != int(loss_input.rank):
                raise BadRequestError(
                    f"data[{i}].loss_fn_inputs.{key}",
                    f"has rank {rank}, but loss {handle.name!r} declared {loss_input.name} with rank {loss_input.rank}",
                )


def as_loss_fn(handle: Any, data: list[Datum]) -> CustomLossFn:
    """The ``(data, logprobs_list) -> (loss, metrics)`` function that runs ``handle`` per datum,
    after its inputs are checked against ``data`` (before anything is queued)."""
    if handle.loss_id is not None:
        raise BadRequestError(
            "loss_fn", f"loss {handle.name!r} was uploaded to a server (loss_id {handle.loss_id!r}); run it there"
        )
    check_handle_inputs(handle, data)

    def run(batch: list[Datum], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        total: Any = None
        sums: dict[str, float] = {}
        for datum, logprobs in zip(batch, logprobs_list, strict=True):
            inputs = [datum.loss_fn_inputs[name].to_torch() for name in _names(handle)]
            loss, metrics = handle.graph(logprobs, *inputs)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise ValueError(f"loss {handle.name!r} must return a scalar loss tensor")
            total = loss if total is None else total + loss
            for key, value in metrics.items():
                number = float(value.detach().item()) if isinstance(value, torch.Tensor) else float(value)
                sums[key] = sums.get(key, 0.0) + number
        return total, {k: v / len(batch) if k.endswith(":mean") else v for k, v in sums.items()}

    return run


def _names(handle: Any) -> tuple[str, ...]:
    return tuple(str(x.name) for x in handle.inputs[1:])
