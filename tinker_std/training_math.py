"""Building blocks for torch-based backends: loss evaluation and the AdamW step.

A backend supplies a function that returns, for each datum, the differentiable logprobs of its
target tokens; ``run_forward_backward`` does the rest (loss, backward, outputs, metrics).
``adamw_step`` applies spec OPT-1..OPT-7 to a ``torch.optim.AdamW``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from .errors import NonFiniteError, RequestFailedError
from .losses import compute_loss
from .types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse, TensorData

__all__ = [
    "CLIP_EPS",
    "DatumLoss",
    "adamw_step",
    "datum_losses",
    "datum_inputs",
    "forward_backward_output",
    "run_forward_backward",
    "target_logprobs",
]

#: Added to the global gradient norm in the clipping coefficient (as in ``torch.nn.utils.clip_grad_norm_``).
CLIP_EPS = 1e-6

LogprobFn = Callable[[Sequence[Datum]], list[torch.Tensor]]


class DatumLoss(Protocol):
    """A loss defined per datum and summed over the datums (spec CLG-4): ``loss(datum, logprobs)``
    returns the datum's scalar loss and its metrics (scalar tensors keyed ``name:sum`` or
    ``name:mean``), ``logprobs`` being the datum's float32 target logprobs. Because it decomposes
    over datums, a backend may evaluate it on any split of a request (micro-batches, ranks) inside
    its own pass; it must pickle (fsdp sends it to every rank). ``name``: what errors call it."""

    name: str

    def __call__(self, datum: Datum, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def datum_inputs(datum: Datum) -> dict[str, torch.Tensor]:
    """A datum's ``loss_fn_inputs`` as torch tensors."""
    return {key: value.to_torch() for key, value in datum.loss_fn_inputs.items()}


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``targets``.

    ``logits`` is (N, V); ``targets`` is (N,) or (N, K) and the result has the shape of ``targets``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    if targets.dim() == 1:
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp.gather(-1, targets)


def run_forward_backward(
    logprob_fn: LogprobFn,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float],
    backward: bool,
    datum_loss: DatumLoss | None = None,
) -> ForwardBackwardOutput:
    """Evaluate ``loss_fn`` on ``data``; with ``backward`` accumulate gradients into the parameters.
    With ``datum_loss``, that loss replaces ``loss_fn`` (``run_datum_loss``)."""
    if datum_loss is not None:
        return run_datum_loss(logprob_fn, data, datum_loss, backward)
    with torch.set_grad_enabled(backward):
        logprobs = logprob_fn(data)
        loss = compute_loss(loss_fn, logprobs, [datum_inputs(d) for d in data], loss_fn_config)
        if backward and loss.requires_grad:
            loss.backward()  # type: ignore[no-untyped-call]
    return forward_backward_output(logprobs, loss)


def datum_losses(
    loss: DatumLoss, data: Sequence[Datum], logprobs: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """``loss`` on each datum: the per-datum scalar losses, and their metrics reduced over ``data``
    (``:sum`` summed, ``:mean`` averaged). ``TypeError`` for a loss that is not a scalar tensor."""
    values: list[torch.Tensor] = []
    sums: dict[str, float] = {}
    for datum, lp in zip(data, logprobs, strict=True):
        value, metrics = loss(datum, lp)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise TypeError(f"loss {loss.name!r} must return a scalar tensor")
        values.append(value)
        for key, metric in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(metric.detach().reshape(()))
    return values, {k: v / len(data) if k.endswith(":mean") else v for k, v in sums.items()}


def run_datum_loss(
    logprob_fn: LogprobFn, data: Sequence[Datum], loss: DatumLoss, backward: bool
) -> ForwardBackwardOutput:
    """One pass of a per-datum loss (CLG-4): the logprobs (with autograd when ``backward``), the
    loss on float32 copies of them, ``g = dL/dlogprobs``, then one backward from the logprobs with
    ``g``: the gradient of the client layer's surrogate (FB-11) without its second pass.

    Metrics as ``forward_backward_custom`` reports them (FB-12, CLG-2): ``loss:sum``, the loss's
    metrics (``:sum`` summed, ``:mean`` averaged over ``data``) and, with ``backward``,
    ``surrogate_loss:sum = sum(g * logprobs)`` (the cross-entropy of weights ``-g``). A loss that
    raises or returns no scalar is a ``RequestFailedError`` of category ``user`` (FB-13); a datum
    loss or gradient that is not finite a ``NonFiniteError`` (FB-15); both before the backward, so
    nothing accumulates."""
    with torch.set_grad_enabled(backward):
        logprobs = logprob_fn(data)
    leaves = [lp.detach().to(torch.float32).requires_grad_(backward) for lp in logprobs]
    try:
        with torch.set_grad_enabled(backward):
            values, reduced = datum_losses(loss, data, leaves)
            total = torch.stack(values).sum()
            grads: Sequence[torch.Tensor | None] = ()
            if backward and total.requires_grad:
                grads = torch.autograd.grad(total, leaves, allow_unused=True)
    except Exception as exc:
        raise RequestFailedError(f"custom loss {loss.name!r} failed: {exc!r}", category="user") from exc
    for i, value in enumerate(values):  # FB-15, as the surrogate's cross-entropy would refuse it
        if not bool(torch.isfinite(value.detach())):
            raise NonFiniteError("loss_fn_inputs", f"loss {loss.name!r} of datum {i} is {float(value.detach())}")
    if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
        raise NonFiniteError("loss_fn_inputs", f"the gradient of loss {loss.name!r} is not finite")
    out = forward_backward_output(logprobs, total)
    out.metrics.update(reduced)
    out.metrics["loss:sum"] = float(total.detach())
    if backward:
        weights = [torch.zeros_like(lp) for lp in leaves]
        for i, g in enumerate(grads):
            if g is not None:
                weights[i] = g
        out.metrics["surrogate_loss:sum"] = sum(
            float((g * lp.detach()).sum()) for g, lp in zip(weights, leaves, strict=True)
        )
        pairs = [(lp, g.to(lp.dtype)) for lp, g in zip(logprobs, weights, strict=True) if lp.requires_grad]
        if pairs:
            torch.autograd.backward([lp for lp, _ in pairs], [g for _, g in pairs])
    return out


def forward_backward_output(logprobs: Sequence[torch.Tensor], loss: torch.Tensor) -> ForwardBackwardOutput:
    """The response for per-datum target ``logprobs`` and the summed ``loss``."""
    outputs = [{"logprobs": TensorData.from_torch(lp.detach().to(torch.float32))} for lp in logprobs]
    return ForwardBackwardOutput(
        loss_fn_output_type="TensorData", loss_fn_outputs=outputs, metrics={"loss:sum": float(loss.detach())}
    )


def adamw_step(optimizer: torch.optim.AdamW, params: AdamParams) -> OptimStepResponse:
    """One AdamW step over every parameter of ``optimizer`` with the accumulated gradients.

    Missing gradients count as zero (OPT-7). The global gradient norm is clipped first when
    ``grad_clip_norm > 0`` (OPT-4), then ``torch.optim.AdamW`` applies decoupled weight decay and the
    moment update (OPT-1..OPT-3). Gradients are cleared afterwards (FB-5). A non-finite gradient
    norm is refused with ``NonFiniteError`` before anything changes, and the gradient discarded (OPT-10).
    """
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trainable]))
    if not bool(torch.isfinite(norm)):
        # OPT-10: refuse before touching weights, moments or the step count; the gradient is unusable
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(
            "gradient",
            f"the accumulated gradient's global norm is {float(norm)} (overflow or NaN); the step was not "
            "applied (weights and optimizer state unchanged) and the gradient was discarded",
        )
    if params.grad_clip_norm > 0:
        coef = torch.clamp(params.grad_clip_norm / (norm + CLIP_EPS), max=1.0)
        for p in trainable:
            p.grad.mul_(coef)
    for group in optimizer.param_groups:
        group["lr"] = params.learning_rate
        group["betas"] = (params.beta1, params.beta2)
        group["eps"] = params.eps
        group["weight_decay"] = params.weight_decay
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step = max((int(s["step"]) for s in optimizer.state.values() if "step" in s), default=0)
    return OptimStepResponse(metrics={"grad_norm:max": float(norm), "step:max": float(step)})
