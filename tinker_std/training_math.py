"""Building blocks for torch-based backends: loss evaluation and the AdamW step.

A backend supplies a function that returns, for each datum, the differentiable logprobs of its
target tokens; ``run_forward_backward`` does the rest (loss, backward, outputs, metrics).
``adamw_step`` applies spec OPT-1..OPT-7 to a ``torch.optim.AdamW``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .losses import compute_loss
from .types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse, TensorData

__all__ = [
    "CLIP_EPS",
    "adamw_step",
    "datum_inputs",
    "forward_backward_output",
    "run_forward_backward",
    "target_logprobs",
]

#: Added to the global gradient norm in the clipping coefficient (as in ``torch.nn.utils.clip_grad_norm_``).
CLIP_EPS = 1e-6

LogprobFn = Callable[[Sequence[Datum]], list[torch.Tensor]]


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
) -> ForwardBackwardOutput:
    """Evaluate ``loss_fn`` on ``data``; with ``backward`` accumulate gradients into the parameters."""
    with torch.set_grad_enabled(backward):
        logprobs = logprob_fn(data)
        loss = compute_loss(loss_fn, logprobs, [datum_inputs(d) for d in data], loss_fn_config)
        if backward and loss.requires_grad:
            loss.backward()  # type: ignore[no-untyped-call]
    return forward_backward_output(logprobs, loss)


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
    moment update (OPT-1..OPT-3). Gradients are cleared afterwards (FB-5).
    """
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trainable]))
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
