"""What each built-in loss accepts (spec LOSS-10..LOSS-13), without importing torch.

The client layer validates requests against these signatures; ``tinker_std.losses`` pairs each
with its formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["INTERNAL_INPUTS", "LossSignature", "LOSS_SIGNATURES"]


@dataclass(frozen=True)
class LossSignature:
    """The ``loss_fn_inputs`` keys and config keys (with defaults) a loss accepts."""

    name: str
    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    config_defaults: Mapping[str, float] = field(default_factory=dict)
    #: whether target_tokens (and weights) may be (N, K) rather than (N,)
    allows_soft_targets: bool = False


_RL_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP_INPUTS = ("clip_low_threshold", "clip_high_threshold")

LOSS_SIGNATURES: Mapping[str, LossSignature] = {
    sig.name: sig
    for sig in (
        LossSignature("cross_entropy", ("target_tokens",), ("weights",), allows_soft_targets=True),
        LossSignature("importance_sampling", _RL_INPUTS),
        LossSignature("ppo", _RL_INPUTS, _CLIP_INPUTS, {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
        LossSignature("cispo", _RL_INPUTS, _CLIP_INPUTS, {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0}),
        LossSignature("dro", _RL_INPUTS, (), {"beta": 0.05}),
        LossSignature(
            "gspo",
            _RL_INPUTS,
            (*_CLIP_INPUTS, "sequence_ratio_mask"),
            {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0004},
        ),
        # LOSS-16: the client layer resolves the datum's provenance and hands the backend
        # target_tokens, advantages, the recorded logprobs and sampled_mask (tinker_std.stability).
        LossSignature(
            "stable_reinforce", ("target_tokens", "advantages"), ("logprobs",), {"kl_coeff": 0.0, "ratio_cap": 2.0}
        ),
    )
}

#: Inputs the client layer adds after validation; never accepted from a caller.
INTERNAL_INPUTS: Mapping[str, tuple[str, ...]] = {"stable_reinforce": ("sampled_mask",)}
