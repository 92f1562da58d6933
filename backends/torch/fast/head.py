"""Target-token logprobs straight from hidden states, without full-vocabulary logits.

``forward_backward`` needs, per position, ``log_softmax(h @ W.T)`` at a few target tokens only.
Computing the whole ``(tokens, vocabulary)`` float32 logits, their log-softmax and, in the
backward, a gradient of the same size costs far more memory traffic than arithmetic (SmolLM2:
512 x 49,152 floats = 100 MB per tensor, several of them, plus the zero-filled gradients of the
slices and gathers). ``target_logprobs`` instead takes the rows in chunks of at most
``CHUNK_ROWS`` (``batch_target_logprobs``: the real positions of a batch's datums joined first)
and, per chunk, computes the logits, their log-softmax and the gathered targets, then
drops them: no tensor larger than one chunk's logits exists at once, forward or backward.

The backward needs no second pass over the logits when the output weight is frozen (the usual
case: LoRA without ``train_unembed``). With ``P`` the softmax of a row and ``g_k`` the upstream
gradient of its ``K`` target logprobs, the logit gradient is ``sum_k g_k (onehot(t_k) - P)``, so
the hidden-state gradient is ``sum_k g_k W[t_k] - (sum_k g_k) P @ W``. The forward computes
``E = P @ W`` per chunk while the chunk's probabilities are at hand (the same multiply-adds as the
plain backward's ``dlogits @ W``, without the full ``dlogits``) and the backward is a gather and
an axpy. When a LoRA factor of the output layer is trained (``train_unembed``), its gradient needs
``P`` itself, so the backward recomputes each chunk's logits instead (one more product). ``E`` is
prepared only for the rows a gradient hint names (``losses.gradient_positions``: the prompt rows
of an RL datum get none); a row the hint left out that gets a gradient all the same is completed
in the backward, so the hint changes the cost only.

With ``lora`` (a LoRA on the output layer) the logits are ``h @ W.T + (u @ B.T) * scaling``,
``u = lora_A(h)``, as peft computes them. The result equals ``tinker_std.training_math.target_logprobs``
on the full logits within float32 rounding (``tests/test_torch_head.py``: the ``fp32``
class). Soft targets ``(N, K)`` and every loss work unchanged: the output is the same ``(N,)`` or
``(N, K)`` tensor, differentiable in the hidden states and the LoRA tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import packed

__all__ = ["CHUNK_ROWS", "HeadLora", "OutputHead", "batch_target_logprobs", "output_head", "target_logprobs"]

#: Rows per chunk: one chunk's float32 logits are CHUNK_ROWS x vocabulary x 4 bytes (25 MB for SmolLM2).
CHUNK_ROWS = 128

#: Causal LMs whose logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling).
FUSABLE_ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"}
)

Rows = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HeadLora:
    """A LoRA adapter on the output layer: ``delta = lora_B(lora_A(h)) * scaling``."""

    lora_a: torch.nn.Module
    lora_b: torch.Tensor
    scaling: float


@dataclass(frozen=True)
class OutputHead:
    """A model's output layer, split so that its logits can be computed in chunks: the base
    ``layer`` (an ``nn.Linear`` without bias) and the decoder that yields its input."""

    decoder: torch.nn.Module
    layer: torch.nn.Linear
    module: torch.nn.Module  # ``layer`` itself, or the peft LoRA layer wrapping it
    packing: bool = True  # whether ``products`` may use packed copies (``TorchSettings.packed_weights``)

    def lora(self, adapter: str | None) -> HeadLora | None:
        """The LoRA of ``adapter`` on this layer, ``None`` when it has none."""
        table: Any = getattr(self.module, "lora_A", None)
        if adapter is None or table is None or adapter not in table:
            return None
        module: Any = self.module
        return HeadLora(table[adapter], module.lora_B[adapter].weight, float(module.scaling[adapter]))

    def products(self) -> tuple[Rows, Rows]:
        """``(x -> x @ W.T, p -> p @ W)``: from packed copies when ``packed`` offers them, else
        plain matrix products (``p`` cast to the weight's dtype). The packed products are probed
        to compute each row independently of the others, so a datum's logprobs and gradient do
        not depend on which datums share its chunks (MKL's GEMM is row-dependent on some CPUs;
        the conformance suite's replays and accumulation checks rely on this)."""
        fast = packed.frozen_products(self.layer) if self.packing else None
        if fast is not None:
            return fast
        weight = self.layer.weight.detach()
        return (lambda x: x @ weight.t()), (lambda p: p.to(weight.dtype) @ weight)


def output_head(model: Any, packing: bool = True) -> OutputHead | None:
    """The split output layer of ``model``, or ``None`` when the fused path does not apply: an
    architecture not known to compute its logits as plain ``lm_head(hidden)``, an output layer
    with a bias or a trainable or sharded (FSDP ``DTensor``) weight. Callers with
    ``TorchSettings.fused_head`` off (``TINKER_STD_FUSED_HEAD=0``) do not call it. ``packing``: see
    ``OutputHead.packing``."""
    if type(model).__name__ not in FUSABLE_ARCHITECTURES:
        return None
    module = model.get_output_embeddings()
    decoder = getattr(model, "model", None)
    layer = getattr(module, "base_layer", module)
    if not isinstance(layer, torch.nn.Linear) or layer.bias is not None or not isinstance(decoder, torch.nn.Module):
        return None
    weight = layer.weight
    if type(weight.data) is not torch.Tensor or weight.requires_grad:
        return None
    return OutputHead(decoder=decoder, layer=layer, module=module, packing=packing)


def target_logprobs(
    head: OutputHead,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lora: HeadLora | None = None,
    gradient_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log_softmax(logits).gather(targets)`` in float32 for one datum's hidden states ``(N, H)``
    and targets ``(N,)`` or ``(N, K)``; differentiable in ``hidden`` and ``lora``'s tensors.

    ``gradient_rows`` ``(N,)`` bool, a hint: the rows whose logprobs may get a non-zero gradient
    (the loss's weights or advantages there are not zero). The forward prepares the backward's
    ``P @ W`` product for those rows only; a row outside the hint that does get a gradient has
    it computed in the backward instead, so the hint changes the cost, never the result."""
    squeeze = targets.dim() == 1
    index = targets.unsqueeze(-1) if squeeze else targets
    forward, backward = head.products()
    low = lora.lora_a(hidden.to(lora.lora_b.dtype)) if lora is not None else None
    factor = lora.lora_b if lora is not None else None
    scaling = lora.scaling if lora is not None else 0.0
    result: torch.Tensor = _ChunkedTargetLogprobs.apply(  # type: ignore[no-untyped-call]
        hidden, low, factor, index, head.layer.weight.detach(), forward, backward, scaling, gradient_rows
    )
    return result.squeeze(-1) if squeeze else result


def batch_target_logprobs(
    head: OutputHead,
    states: torch.Tensor,
    positions: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    adapters: Sequence[str | None],
    gradient_rows: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """``target_logprobs`` of every datum of a batch: datum ``i``'s hidden states are the rows
    ``positions[i]`` of ``states`` ``(M, H)``; it has targets ``targets[i]``, goes through the
    head LoRA of ``adapters[i]`` and has the gradient hint ``gradient_rows[i]`` (``None``: every
    row). The rows of all datums that share an adapter and a target width are joined before
    chunking, so short datums do not each stream the whole output weight, and a row that several
    datums share with the same targets (a shared prefix, ``prefix_layout.py``) is computed once."""
    groups: dict[tuple[str | None, int, int], list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault((adapters[i], t.dim(), 1 if t.dim() == 1 else t.shape[-1]), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(targets)
    for (adapter, dim, width), rows in groups.items():
        keys = torch.cat([torch.cat([positions[i].unsqueeze(-1), targets[i].reshape(-1, width)], dim=-1) for i in rows])
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        hint = None
        if gradient_rows is not None and all(gradient_rows[i] is not None for i in rows):
            wanted = torch.cat([gradient_rows[i] for i in rows])  # type: ignore[misc]
            hint = torch.zeros(len(unique), dtype=torch.bool).index_put_((inverse,), wanted, accumulate=True)
        logprobs = target_logprobs(head, states[unique[:, 0]], unique[:, 1:], head.lora(adapter), hint)
        for i, piece in zip(rows, torch.split(inverse, [len(positions[i]) for i in rows]), strict=True):
            out[i] = logprobs[piece] if dim == 2 else logprobs[piece].squeeze(-1)
    return [lp for lp in out if lp is not None]


def _chunk_logits(
    forward: Rows, hidden: torch.Tensor, low: torch.Tensor | None, factor: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Float32 logits of some rows, as peft computes them: base product, plus the LoRA delta."""
    logits = forward(hidden).float()
    if low is not None and factor is not None:
        logits = logits + (low @ factor.t() * scaling).float()
    return logits


class _ChunkedTargetLogprobs(torch.autograd.Function):
    """See the module docstring. Inputs: hidden ``(N, H)``, LoRA ``low = lora_A(hidden)``
    ``(N, r)`` and ``factor = lora_B.weight`` ``(V, r)`` (or ``None``), targets ``(N, K)``, the
    frozen weight ``(V, H)`` and its two products; output: ``(N, K)`` float32 logprobs."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        low: torch.Tensor | None,
        factor: torch.Tensor | None,
        targets: torch.Tensor,
        weight: torch.Tensor,
        forward: Rows,
        backward: Rows,
        scaling: float,
        gradient_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad
        recompute = bool(needs[2])  # the factor's gradient needs P itself
        expect = (needs[0] or needs[1]) and not recompute
        hint = gradient_rows if expect else None
        out = hidden.new_empty(targets.shape, dtype=torch.float32)
        # with a hint, rows left out must hold zeros: the backward scales them by a zero gradient
        empty = hidden.new_empty if hint is None else hidden.new_zeros
        expected = empty(hidden.shape, dtype=torch.float32) if expect else None
        expected_low = empty(low.shape, dtype=torch.float32) if expect and low is not None else None
        prepared = None if hint is None else torch.zeros_like(hint)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, hidden.shape[0])
            part = slice(start, stop)
            logits = _chunk_logits(forward, hidden[part], None if low is None else low[part], factor, scaling)
            # in place: the chunk's logits are not needed again (same kernel, same bits, one
            # chunk-sized buffer less to allocate and fault in per chunk)
            logp = torch.log_softmax(logits, dim=-1, out=logits)
            del logits
            out[part] = logp.gather(-1, targets[part])
            if expected is not None:
                rows: slice | torch.Tensor = part
                picked = None if hint is None else _at_least_two(torch.nonzero(hint[part]).flatten(), stop - start)
                if picked is None or prepared is None or len(picked) == stop - start:
                    probs = logp.exp_()
                    if prepared is not None:
                        prepared[part] = True
                else:
                    probs = logp[picked].exp_()
                    rows = picked + start
                    prepared[rows] = True
                if len(probs):
                    expected[rows] = backward(probs).float()
                    if expected_low is not None and factor is not None:
                        expected_low[rows] = (probs @ factor.float()) * scaling
        ctx.save_for_backward(hidden, low, factor, targets, weight, expected, expected_low, prepared)
        ctx.products = (forward, backward)
        ctx.scaling = scaling
        ctx.recompute = recompute
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, low, factor, targets, weight, expected, expected_low, prepared = ctx.saved_tensors
        forward, backward = ctx.products
        scaling: float = ctx.scaling
        grad = grad.float()
        total = grad.sum(-1, keepdim=True)  # sum_k g_k per row
        grad_hidden = grad_low = grad_factor = None
        if ctx.recompute:
            grad_hidden = torch.empty_like(hidden, dtype=torch.float32)
            grad_low = torch.empty_like(low, dtype=torch.float32)
            grad_factor = torch.zeros_like(factor, dtype=torch.float32)
            for start in range(0, hidden.shape[0], CHUNK_ROWS):
                part = slice(start, min(start + CHUNK_ROWS, hidden.shape[0]))
                logits = _chunk_logits(forward, hidden[part], low[part], factor, scaling)
                dlogits = torch.softmax(logits, dim=-1).mul_(-total[part])
                del logits
                dlogits.scatter_add_(-1, targets[part], grad[part])
                grad_hidden[part] = backward(dlogits).float()
                grad_low[part] = (dlogits @ factor.float()) * scaling
                grad_factor.addmm_(dlogits.t(), low[part].float(), alpha=scaling)
        else:
            if prepared is not None:
                _complete(ctx, hidden, low, factor, expected, expected_low, (total.squeeze(-1) != 0) & ~prepared)
            rows = weight.index_select(0, targets.reshape(-1)).float().view(*targets.shape, -1)
            grad_hidden = (grad.unsqueeze(-1) * rows).sum(-2) - total * expected
            if expected_low is not None:
                low_rows = factor.index_select(0, targets.reshape(-1)).float().view(*targets.shape, -1)
                grad_low = (grad.unsqueeze(-1) * low_rows).sum(-2) * scaling - total * expected_low
        needs = ctx.needs_input_grad
        return (
            grad_hidden.to(hidden.dtype) if needs[0] else None,
            grad_low.to(low.dtype) if needs[1] and grad_low is not None else None,
            grad_factor.to(factor.dtype) if needs[2] and grad_factor is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _at_least_two(rows: torch.Tensor, available: int) -> torch.Tensor:
    """Row indices ``rows`` (out of ``available``), with a second one added where there is just
    one: the packed products are probed to be row-independent for two rows or more, so a row gets
    the bits it gets in a full chunk."""
    if len(rows) != 1 or available < 2:
        return rows
    other = 1 if int(rows[0]) == 0 else 0
    return torch.stack([rows[0], rows.new_tensor(other)]).sort().values


def _complete(
    ctx: Any,
    hidden: torch.Tensor,
    low: torch.Tensor | None,
    factor: torch.Tensor | None,
    expected: torch.Tensor,
    expected_low: torch.Tensor | None,
    missing: torch.Tensor,
) -> None:
    """Fill ``E = P @ W`` (and its LoRA twin) in place for the ``missing`` rows, which the forward
    skipped on the strength of the gradient hint but which got a non-zero gradient after all. An
    extra row computed for ``_at_least_two`` is either prepared already (the same bits) or has a
    zero gradient (unused)."""
    rows = _at_least_two(torch.nonzero(missing).flatten(), len(missing))
    forward, backward = ctx.products
    for start in range(0, len(rows), CHUNK_ROWS):
        part = _at_least_two(rows[start : start + CHUNK_ROWS], len(missing))
        logits = _chunk_logits(forward, hidden[part], None if low is None else low[part], factor, ctx.scaling)
        probs = torch.log_softmax(logits, dim=-1).exp_()  # as the forward computes them
        del logits
        expected[part] = backward(probs).float()
        if expected_low is not None and factor is not None:
            expected_low[part] = (probs @ factor.float()) * ctx.scaling
