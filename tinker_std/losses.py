"""Built-in loss functions, shared by every backend (spec section LOSS).

Each loss maps the current target-token logprobs of every datum, plus that datum's
``loss_fn_inputs`` as tensors, to one scalar. Every built-in is a plain SUM over tokens and
datums (spec LOSS-1); normalisation is the caller's job, folded into weights or advantages.

Notation per datum: ``lp`` current logprobs (N,) or (N, K); ``q`` = ``logprobs`` input (the
sampler's logprobs); ``A`` = ``advantages``; ``w`` = ``weights``; ``r = exp(lp - q)``;
``sg`` = stop-gradient (``detach``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .loss_signatures import LOSS_SIGNATURES, LossSignature

__all__ = ["GRADIENT_GATES", "LossSpec", "LOSSES", "compute_loss", "gradient_positions", "loss_spec"]

Inputs = Mapping[str, torch.Tensor]
Config = Mapping[str, float]
PerDatumLoss = Callable[[torch.Tensor, Inputs, Config], torch.Tensor]


@dataclass(frozen=True)
class LossSpec(LossSignature):
    """A loss's signature plus its per-datum formula."""

    fn: PerDatumLoss = field(default=lambda lp, inputs, config: lp.sum())


def _clip_bounds(inputs: Inputs, config: Config, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clip bounds: a ``clip_*_threshold`` input overrides the config value (LOSS-9)."""
    lo = inputs.get("clip_low_threshold")
    hi = inputs.get("clip_high_threshold")
    lo_t = lo.to(lp.dtype) if lo is not None else torch.full_like(lp, config["clip_low_threshold"])
    hi_t = hi.to(lp.dtype) if hi is not None else torch.full_like(lp, config["clip_high_threshold"])
    return lo_t, hi_t


def cross_entropy(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """``-sum(w * lp)``; missing weights mean ones (LOSS-2). Works for (N,) and (N, K)."""
    weights = inputs.get("weights")
    if weights is None:
        return -lp.sum()
    return -(weights.to(lp.dtype) * lp).sum()


def importance_sampling(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """``-sum(exp(lp - q) * A)`` (LOSS-3)."""
    ratio = torch.exp(lp - inputs["logprobs"].to(lp.dtype))
    return -(ratio * inputs["advantages"].to(lp.dtype)).sum()


def ppo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """``-sum(min(r * A, clip(r, lo, hi) * A))`` with ratio bounds lo/hi (LOSS-4)."""
    adv = inputs["advantages"].to(lp.dtype)
    ratio = torch.exp(lp - inputs["logprobs"].to(lp.dtype))
    lo, hi = _clip_bounds(inputs, config, lp)
    clipped = torch.minimum(torch.maximum(ratio, lo), hi)
    return -torch.minimum(ratio * adv, clipped * adv).sum()


def cispo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """``-sum(sg(clip(r, lo, hi)) * lp * A)`` (LOSS-5)."""
    adv = inputs["advantages"].to(lp.dtype)
    ratio = torch.exp(lp - inputs["logprobs"].to(lp.dtype)).detach()
    lo, hi = _clip_bounds(inputs, config, lp)
    clipped = torch.minimum(torch.maximum(ratio, lo), hi)
    return -(clipped * lp * adv).sum()


def dro(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """``-sum(lp * A - beta/2 * (lp - q)^2)`` (LOSS-6)."""
    adv = inputs["advantages"].to(lp.dtype)
    q = inputs["logprobs"].to(lp.dtype)
    return -(lp * adv - 0.5 * config["beta"] * (lp - q) ** 2).sum()


def sampled_positions(adv: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """gspo's default ratio mask (LOSS-7): the positions with a non-zero advantage or sampling
    logprob, i.e. those that carry a sampled token in the cookbook's datum layout (prompt
    positions are padded with ``A = 0`` and ``q = 0``)."""
    return (adv != 0) | (q != 0)


def gspo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """Sequence-level ratio PPO (LOSS-7).

    With M the positions whose ``sequence_ratio_mask`` is non-zero (when the mask is absent: the
    positions that carry a sampled token, ``A != 0`` or ``q != 0``; decisions.md #16):
    ``log s = mean_{t in M}(sg(lp_t) - q_t)`` (0 when M is empty),
    ``s_t = exp(log s + lp_t - sg(lp_t))`` and the loss is
    ``-sum_t min(s_t * A_t, clip(s_t, lo, hi) * A_t)`` over all positions.
    """
    adv = inputs["advantages"].to(lp.dtype)
    q = inputs["logprobs"].to(lp.dtype)
    mask = inputs.get("sequence_ratio_mask")
    selected = sampled_positions(adv, q) if mask is None else mask != 0
    count = int(selected.sum())
    log_s = ((lp.detach() - q) * selected).sum() / count if count else lp.new_zeros(())
    seq_ratio = torch.exp(log_s + lp - lp.detach())
    lo, hi = _clip_bounds(inputs, config, lp)
    clipped = torch.minimum(torch.maximum(seq_ratio, lo), hi)
    return -torch.minimum(seq_ratio * adv, clipped * adv).sum()


def stable_reinforce(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """Truncated-importance REINFORCE with a KL penalty to the sampler (LOSS-16).

    Over the sampled positions ``S`` (``sampled_mask`` = 1; the client layer sets it from the
    datum's provenance and puts the sampler's *recorded* logprobs in ``logprobs``):
    ``L = -sum_S sg(min(r, ratio_cap)) * A * lp + kl_coeff * sum_S (r - 1 - log r)``,
    ``r = exp(lp - q)``. Other positions contribute nothing.
    """
    mask = inputs["sampled_mask"].to(lp.dtype)
    adv = inputs["advantages"].to(lp.dtype)
    log_ratio = (lp - inputs["logprobs"].to(lp.dtype)) * mask
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio.detach(), max=config["ratio_cap"])
    policy = -(weight * adv * lp * mask).sum()
    kl = ((ratio - 1.0 - log_ratio) * mask).sum()
    return policy + config["kl_coeff"] * kl


_FORMULAS: Mapping[str, PerDatumLoss] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
    "cispo": cispo,
    "dro": dro,
    "gspo": gspo,
    "stable_reinforce": stable_reinforce,
}

LOSSES: Mapping[str, LossSpec] = {
    name: LossSpec(
        name=sig.name,
        required_inputs=sig.required_inputs,
        optional_inputs=sig.optional_inputs,
        config_defaults=sig.config_defaults,
        allows_soft_targets=sig.allows_soft_targets,
        fn=_FORMULAS[name],
    )
    for name, sig in LOSS_SIGNATURES.items()
}


#: The input whose zeros zero a built-in loss's gradient: where it is 0 at a position (at every one
#: of the position's K targets), that position's logprobs get no gradient. ``dro``'s penalty
#: term has a gradient everywhere, so it has no gate.
GRADIENT_GATES: Mapping[str, str] = {
    "cross_entropy": "weights",
    "importance_sampling": "advantages",
    "ppo": "advantages",
    "cispo": "advantages",
    "gspo": "advantages",
    "stable_reinforce": "sampled_mask",
}


def gradient_positions(loss_fn: str, inputs: Inputs) -> torch.Tensor | None:
    """``(N,)`` bool: the positions whose logprobs may get a non-zero gradient from built-in
    ``loss_fn`` (``False`` only where its gate, ``GRADIENT_GATES``, is zero); ``None`` when every
    position may (no gate, or the gate input absent). A hint for backends that can skip work for
    the other positions; a loss's gradient there is exactly zero for finite logprobs."""
    gate = inputs.get(GRADIENT_GATES.get(loss_fn, ""))
    if gate is None:
        return None
    nonzero = gate != 0
    return nonzero if nonzero.dim() == 1 else nonzero.any(dim=-1)


def loss_spec(name: str) -> LossSpec:
    """The spec of a built-in loss; ``KeyError`` for unknown names."""
    return LOSSES[name]


def resolved_config(spec: LossSpec, config: Mapping[str, float | str] | None) -> dict[str, float]:
    """The loss config with defaults filled in (keys already validated)."""
    merged = dict(spec.config_defaults)
    for key, value in (config or {}).items():
        merged[key] = float(value)
    return merged


def compute_loss(
    loss_fn: str,
    logprobs: Sequence[torch.Tensor],
    inputs: Sequence[Inputs],
    config: Mapping[str, float | str] | None = None,
) -> torch.Tensor:
    """Sum of the per-datum loss over all datums; differentiable in ``logprobs``."""
    spec = LOSSES[loss_fn]
    cfg = resolved_config(spec, config)
    total: torch.Tensor | None = None
    for lp, datum_inputs in zip(logprobs, inputs, strict=True):
        value = spec.fn(lp, datum_inputs, cfg)
        total = value if total is None else total + value
    if total is None:
        raise ValueError("compute_loss needs at least one datum")
    return total
