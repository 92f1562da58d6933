"""``forward_backward_custom``: any differentiable function of the logprobs, via a surrogate loss.

With ``L = fn(data, logprobs)`` computed on the client, the gradient of ``L`` with respect to the
model equals that of the built-in cross-entropy ``-sum(w * lp)`` with ``w = -dL/dlp`` (spec FB-9).
So: forward to get logprobs, differentiate ``L`` with respect to them, then run cross_entropy
forward_backward with those weights.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from ..errors import RequestFailedError
from ..types import Datum, ForwardBackwardOutput, TensorData

__all__ = ["CustomLossFn", "RunCrossEntropy", "run_custom_loss", "score_custom_loss"]

#: ``fn(data, logprobs) -> (loss, metrics)``; ``logprobs[i]`` is a float32 tensor shaped like
#: ``data[i]``'s target_tokens, and ``loss`` a scalar tensor differentiable in them.
CustomLossFn = Callable[[list[Datum], list["torch.Tensor"]], tuple["torch.Tensor", dict[str, float]]]
RunCrossEntropy = Callable[[list[Datum], bool], Awaitable[ForwardBackwardOutput]]


def _with_weights(data: Sequence[Datum], weights: Sequence[torch.Tensor]) -> list[Datum]:
    return [
        Datum(
            model_input=d.model_input,
            loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": TensorData.from_torch(w)},
        )
        for d, w in zip(data, weights, strict=True)
    ]


async def run_custom_loss(data: list[Datum], fn: CustomLossFn, run_ce: RunCrossEntropy) -> ForwardBackwardOutput:
    """Evaluate ``fn`` and accumulate its gradient with one forward and one forward_backward."""
    import torch  # imported here so that ``import tinker_std`` stays free of torch

    zeros = [torch.zeros(d.loss_fn_inputs["target_tokens"].resolved_shape, dtype=torch.float32) for d in data]
    scored = await run_ce(_with_weights(data, zeros), False)
    logprobs = [out["logprobs"].to_torch().clone().requires_grad_(True) for out in scored.loss_fn_outputs]
    try:
        loss, user_metrics = fn(data, logprobs)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError("a custom loss function must return (scalar tensor, metrics dict)")
        bad_keys = [k for k in user_metrics if str(k).count(":") != 1]
        if bad_keys:
            raise ValueError(f"custom loss metric keys must be name:reduction, got {bad_keys}")
        grads = torch.autograd.grad(loss, logprobs, allow_unused=True)
    except Exception as exc:
        raise RequestFailedError(f"custom loss function failed: {exc!r}", category="user") from exc
    weights = [
        -g.detach().to(torch.float32) if g is not None else torch.zeros_like(lp)
        for g, lp in zip(grads, logprobs, strict=True)
    ]
    surrogate = await run_ce(_with_weights(data, weights), True)
    metrics = {
        **{k: float(v) for k, v in user_metrics.items()},
        "loss:sum": float(loss.detach()),
        "surrogate_loss:sum": surrogate.metrics["loss:sum"],
    }
    return ForwardBackwardOutput(
        loss_fn_output_type=surrogate.loss_fn_output_type, loss_fn_outputs=surrogate.loss_fn_outputs, metrics=metrics
    )


async def score_custom_loss(data: list[Datum], fn: CustomLossFn, run_ce: RunCrossEntropy) -> ForwardBackwardOutput:
    """Evaluate ``fn`` without a gradient (``forward`` with a graph loss, CLG-5): one forward,
    then the loss on its logprobs. Metrics: ``loss:sum`` and ``fn``'s; outputs: the forward's."""
    import torch

    zeros = [torch.zeros(d.loss_fn_inputs["target_tokens"].resolved_shape, dtype=torch.float32) for d in data]
    scored = await run_ce(_with_weights(data, zeros), False)
    logprobs = [out["logprobs"].to_torch() for out in scored.loss_fn_outputs]
    try:
        with torch.no_grad():
            loss, user_metrics = fn(data, logprobs)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError("a custom loss function must return (scalar tensor, metrics dict)")
    except Exception as exc:
        raise RequestFailedError(f"custom loss function failed: {exc!r}", category="user") from exc
    metrics = {**{k: float(v) for k, v in user_metrics.items()}, "loss:sum": float(loss)}
    return ForwardBackwardOutput(
        loss_fn_output_type=scored.loss_fn_output_type, loss_fn_outputs=scored.loss_fn_outputs, metrics=metrics
    )
