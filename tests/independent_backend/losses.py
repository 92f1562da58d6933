"""The six built-in losses, written from the formulas of spec/03-losses.md (not from tinker_std.losses).

Every loss is a plain sum over positions (LOSS-1); ``sg`` is ``detach``; ``clip(x, lo, hi)`` is
``min(max(x, lo), hi)`` as the spec's notation defines it. ``config`` arrives with every key of the
loss filled in (BE-4). A per-position ``clip_*_threshold`` input overrides the config bound for that
datum (LOSS-9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from tinker_std.types import TensorData

__all__ = ["datum_loss"]

Inputs = Mapping[str, TensorData]
Config = Mapping[str, float]


def _input(inputs: Inputs, key: str, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(inputs[key].to_numpy(), dtype=like.dtype).reshape(like.shape)


def _bounds(inputs: Inputs, config: Config, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for key in ("clip_low_threshold", "clip_high_threshold"):
        out.append(_input(inputs, key, lp) if key in inputs else torch.full_like(lp, float(config[key])))
    return out[0], out[1]


def _clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lo), hi)


def _cross_entropy(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    w = _input(inputs, "weights", lp) if "weights" in inputs else torch.ones_like(lp)
    return -(w * lp).sum()


def _ratio_terms(lp: torch.Tensor, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, adv = _input(inputs, "logprobs", lp), _input(inputs, "advantages", lp)
    return torch.exp(lp - q), q, adv


def _importance_sampling(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    r, _, adv = _ratio_terms(lp, inputs)
    return -(r * adv).sum()


def _ppo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    r, _, adv = _ratio_terms(lp, inputs)
    lo, hi = _bounds(inputs, config, lp)
    return -torch.minimum(r * adv, _clip(r, lo, hi) * adv).sum()


def _cispo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    r, _, adv = _ratio_terms(lp, inputs)
    lo, hi = _bounds(inputs, config, lp)
    return -(_clip(r, lo, hi).detach() * lp * adv).sum()


def _dro(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    _, q, adv = _ratio_terms(lp, inputs)
    beta = float(config["beta"])
    return -(lp * adv - 0.5 * beta * (lp - q) ** 2).sum()


def _gspo(lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    _, q, adv = _ratio_terms(lp, inputs)
    if "sequence_ratio_mask" in inputs:
        selected = _input(inputs, "sequence_ratio_mask", lp) != 0
    else:  # spec 0.2 LOSS-7: the positions that carry a sampled token
        selected = (adv != 0) | (q != 0)
    const = lp.detach()
    count = int(selected.sum())
    log_s = (const - q)[selected].sum() / count if count else torch.zeros((), dtype=lp.dtype)
    s = torch.exp(log_s + lp - const)
    lo, hi = _bounds(inputs, config, lp)
    return -torch.minimum(s * adv, _clip(s, lo, hi) * adv).sum()


_LOSSES: dict[str, Callable[[torch.Tensor, Inputs, Config], torch.Tensor]] = {
    "cross_entropy": _cross_entropy,
    "importance_sampling": _importance_sampling,
    "ppo": _ppo,
    "cispo": _cispo,
    "dro": _dro,
    "gspo": _gspo,
}


def datum_loss(loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """One datum's contribution to the call's loss (the call's loss is the sum over datums)."""
    return _LOSSES[loss_fn](lp, inputs, config)
