"""Mutants of the loss statements (LOSS): one wrong loss each, on the independent provider.

Every mutant is the independent float32 provider (``tests/independent_backend``) with one loss
formula, reduction, default or input handling broken in its ``_datum_loss`` seam (or, for config
defaults, in the client layer: see ``WrongDefaults`` below). Deriving from a float32 provider
rather than from the bit-exact mock means each bug must show beyond the ``fp32`` tolerances.

Config defaults (LOSS-4..LOSS-7's defaults, LOSS-11) are filled in by the client layer before a
backend sees a config (BE-4), so a provider whose defaults differ is one that ships its own
client (as a server reached through the ``tinker`` backend does): those mutants patch the
default table of ``tinker_std.loss_signatures`` in the suite's process when they are constructed.
Request validation (LOSS-8, LOSS-10, LOSS-13) is the client layer's too; its mutants replace one
validation function (``mutants._patch``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from independent_backend import IndependentBackend
from independent_backend.losses import _bounds, _clip, _input, _ratio_terms, datum_loss

from tinker_std.types import TensorData

from . import Mutant
from ._patch import replace_everywhere

BASE = "independent_backend:IndependentBackend"
LOSSES_MODULE = "tinker_std.conformance.test_losses"
Inputs = Mapping[str, TensorData]
Config = Mapping[str, float]


def _node(test: str, param: str | None = None) -> str:
    return f"{LOSSES_MODULE}::{test}" + (f"[{param}]" if param else "")


def formula(loss: str) -> str:
    return _node("test_loss_sum_is_the_formula_of_the_returned_logprobs", loss)


def gradient(loss: str) -> str:
    return _node("test_gradient_is_the_gradient_of_the_formula", loss)


def defaults(loss: str) -> str:
    return _node("test_config_defaults", loss)


class _LossMutant(IndependentBackend):
    """Replaces ``_datum_loss`` for one loss with ``wrong``."""

    target: ClassVar[str] = ""

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        raise NotImplementedError

    def _datum_loss(self, loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        if loss_fn == self.target:
            return self.wrong(lp, inputs, config)
        return datum_loss(loss_fn, lp, inputs, config)


# -- wrong formulas ---------------------------------------------------------------------------------


class CrossEntropyIgnoresWeights(_LossMutant):
    """LOSS-2: ``weights`` ignored, every position weighted 1."""

    name: ClassVar[str] = "mutant-ce-ignores-weights"
    target: ClassVar[str] = "cross_entropy"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        return -lp.sum()


class CrossEntropyClampsNegativeWeights(_LossMutant):
    """LOSS-15: weights read as a mask, negative weights clamped to 0 (breaks custom losses)."""

    name: ClassVar[str] = "mutant-ce-clamps-weights"
    target: ClassVar[str] = "cross_entropy"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        w = _input(inputs, "weights", lp).clamp(min=0.0) if "weights" in inputs else torch.ones_like(lp)
        return -(w * lp).sum()


class ImportanceSamplingLogRatio(_LossMutant):
    """LOSS-3: the log-ratio ``lp - q`` used in place of the ratio ``exp(lp - q)``."""

    name: ClassVar[str] = "mutant-is-log-ratio"
    target: ClassVar[str] = "importance_sampling"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        _, q, adv = _ratio_terms(lp, inputs)
        return -((lp - q) * adv).sum()


class PpoEpsilonBounds(_LossMutant):
    """LOSS-4: the clip thresholds read as an epsilon around 1 (``clip(r, 1 - lo, 1 + hi)``)."""

    name: ClassVar[str] = "mutant-ppo-epsilon-bounds"
    target: ClassVar[str] = "ppo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        r, _, adv = _ratio_terms(lp, inputs)
        lo, hi = _bounds(inputs, config, lp)
        return -torch.minimum(r * adv, _clip(r, 1 - lo, 1 + hi) * adv).sum()


class PpoMaxInsteadOfMin(_LossMutant):
    """LOSS-4: the pessimistic ``min`` of the clipped objective replaced by ``max``."""

    name: ClassVar[str] = "mutant-ppo-max"
    target: ClassVar[str] = "ppo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        r, _, adv = _ratio_terms(lp, inputs)
        lo, hi = _bounds(inputs, config, lp)
        return -torch.maximum(r * adv, _clip(r, lo, hi) * adv).sum()


class CispoUnclippedWeight(_LossMutant):
    """LOSS-5: the stop-gradient ratio weight is not clipped."""

    name: ClassVar[str] = "mutant-cispo-unclipped"
    target: ClassVar[str] = "cispo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        r, _, adv = _ratio_terms(lp, inputs)
        return -(r.detach() * lp * adv).sum()


class CispoNoStopGradient(_LossMutant):
    """LOSS-14: cispo's clipped ratio is differentiated through (no ``sg``); the value is right."""

    name: ClassVar[str] = "mutant-cispo-no-stop-gradient"
    target: ClassVar[str] = "cispo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        r, _, adv = _ratio_terms(lp, inputs)
        lo, hi = _bounds(inputs, config, lp)
        return -(_clip(r, lo, hi) * lp * adv).sum()


class DroNoHalf(_LossMutant):
    """LOSS-6: the penalty lacks its factor one half (``β·(lp - q)²``)."""

    name: ClassVar[str] = "mutant-dro-no-half"
    target: ClassVar[str] = "dro"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        _, q, adv = _ratio_terms(lp, inputs)
        return -(lp * adv - float(config["beta"]) * (lp - q) ** 2).sum()


class GspoTokenRatio(_LossMutant):
    """LOSS-7: a per-token ratio ``exp(lp_t - q_t)`` instead of the sequence ratio (that is, PPO)."""

    name: ClassVar[str] = "mutant-gspo-token-ratio"
    target: ClassVar[str] = "gspo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        r, _, adv = _ratio_terms(lp, inputs)
        lo, hi = _bounds(inputs, config, lp)
        return -torch.minimum(r * adv, _clip(r, lo, hi) * adv).sum()


class GspoIgnoresMask(_LossMutant):
    """LOSS-7: ``sequence_ratio_mask`` ignored: every position enters the sequence ratio."""

    name: ClassVar[str] = "mutant-gspo-ignores-mask"
    target: ClassVar[str] = "gspo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        stripped = {k: v for k, v in inputs.items() if k != "sequence_ratio_mask"}
        return datum_loss("gspo", lp, stripped, config)


class GspoNoStopGradient(_LossMutant):
    """LOSS-14: gspo's sequence ratio differentiated through ``log s`` too (value unchanged)."""

    name: ClassVar[str] = "mutant-gspo-no-stop-gradient"
    target: ClassVar[str] = "gspo"

    def wrong(self, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        _, q, adv = _ratio_terms(lp, inputs)
        if "sequence_ratio_mask" in inputs:
            selected = _input(inputs, "sequence_ratio_mask", lp) != 0
        else:
            selected = torch.ones_like(lp, dtype=torch.bool)
        count = int(selected.sum())
        log_s = (lp - q)[selected].sum() / count if count else torch.zeros((), dtype=lp.dtype)
        s = torch.exp(log_s + lp - lp.detach())
        lo, hi = _bounds(inputs, config, lp)
        return -torch.minimum(s * adv, _clip(s, lo, hi) * adv).sum()


class ClipTensorsIgnored(IndependentBackend):
    """LOSS-9: per-position ``clip_*_threshold`` tensors accepted and ignored (the config bound is used)."""

    name: ClassVar[str] = "mutant-clip-tensors-ignored"

    def _datum_loss(self, loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        stripped = {k: v for k, v in inputs.items() if not k.startswith("clip_")}
        return datum_loss(loss_fn, lp, stripped, config)


class ConfigIgnored(IndependentBackend):
    """LOSS-11: ``loss_fn_config`` ignored: the provider always uses the spec's default values."""

    name: ClassVar[str] = "mutant-config-ignored"
    DEFAULTS: ClassVar[dict[str, float]] = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2, "beta": 0.05}

    def _datum_loss(self, loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        return datum_loss(loss_fn, lp, inputs, {k: self.DEFAULTS[k] for k in config})


class SoftTargetsFirstColumn(IndependentBackend):
    """LOSS-12: with ``(N, K)`` targets only column 0 is scored (and its weight applied K times)."""

    name: ClassVar[str] = "mutant-soft-targets-first-column"

    def _target_logprobs(self, datum, adapter):  # type: ignore[no-untyped-def]
        lp = super()._target_logprobs(datum, adapter)
        return lp[:, :1].expand_as(lp) if lp.ndim == 2 else lp


# -- reductions (LOSS-1) ---------------------------------------------------------------------------


class _MeanReduction(IndependentBackend):
    """LOSS-1: one loss is a mean over the call's target positions (value and gradient)."""

    target: ClassVar[str] = ""

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        if loss_fn != self.target:
            return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        positions = sum(d.loss_fn_inputs["target_tokens"].to_numpy().size for d in data)
        self._scale = 1.0 / positions
        try:
            out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        finally:
            self._scale = 1.0
        return out

    _scale: float = 1.0

    def _datum_loss(self, loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        return datum_loss(loss_fn, lp, inputs, config) * self._scale


def _mean_mutant(loss: str) -> type[_MeanReduction]:
    name = f"MeanReduction_{loss}"
    namespace = {"name": f"mutant-mean-{loss}", "target": loss, "__module__": __name__, "__qualname__": name}
    cls = type(name, (_MeanReduction,), namespace)
    cls.__doc__ = f"LOSS-1: {loss} is a mean over the call's target positions instead of a sum."
    globals()[cls.__name__] = cls
    return cls


for _loss in ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo"):
    _mean_mutant(_loss)


# -- config defaults, applied by the client layer --------------------------------------------------

_WRONG_DEFAULTS: dict[str, dict[str, float]] = {
    "ppo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": 0.01},
    "gspo": {"clip_low_threshold": 0.9997, "clip_high_threshold": 1.0003},
}


def _patch_defaults(loss: str) -> None:
    """Swap ``loss``'s config defaults in the client layer's signature table (in place)."""
    from tinker_std import loss_signatures

    table = loss_signatures.LOSS_SIGNATURES
    table[loss] = dataclasses.replace(table[loss], config_defaults=_WRONG_DEFAULTS[loss])  # type: ignore[index]


class _WrongDefaults(IndependentBackend):
    """Defaults of one loss differ from the spec's table: patched into the client layer when the
    provider is constructed (not at import, so the other mutants of this module stay clean)."""

    target: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        _patch_defaults(self.target)


class WrongPpoDefaults(_WrongDefaults):
    """LOSS-4: ppo defaults 0.9 / 1.1 (an epsilon of 0.1, as found on a third-party server)."""

    name: ClassVar[str] = "mutant-ppo-defaults"
    target: ClassVar[str] = "ppo"


class WrongCispoDefaults(_WrongDefaults):
    """LOSS-5: cispo defaults 0.8 / 1.2 (an older docs example) instead of 0.0 / 4.0."""

    name: ClassVar[str] = "mutant-cispo-defaults"
    target: ClassVar[str] = "cispo"


class WrongDroDefaults(_WrongDefaults):
    """LOSS-6: dro's beta defaults to 0.01 instead of 0.05."""

    name: ClassVar[str] = "mutant-dro-defaults"
    target: ClassVar[str] = "dro"


class WrongGspoDefaults(_WrongDefaults):
    """LOSS-7: gspo's high bound defaults to 1.0003 instead of 1.0004."""

    name: ClassVar[str] = "mutant-gspo-defaults"
    target: ClassVar[str] = "gspo"


def _m(cls: type, statement: str, *selection: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(f"mutants.loss:{cls.__name__}", statement, selection, base=BASE, also=frozenset(also))


_ALL = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo")
_STATEMENT = {"cross_entropy": "LOSS-2", "importance_sampling": "LOSS-3", "ppo": "LOSS-4"}
_STATEMENT.update({"cispo": "LOSS-5", "dro": "LOSS-6", "gspo": "LOSS-7"})

MUTANTS: list[Mutant] = [
    _m(CrossEntropyIgnoresWeights, "LOSS-2", formula("cross_entropy"), also=("FB-2",)),
    _m(
        CrossEntropyClampsNegativeWeights,
        "LOSS-15",
        _node("test_cross_entropy_gradient_is_linear_in_real_weights"),
        also=("LOSS-2", "FB-2", "FB-3"),
    ),
    _m(ImportanceSamplingLogRatio, "LOSS-3", formula("importance_sampling"), also=("FB-2",)),
    _m(PpoEpsilonBounds, "LOSS-4", formula("ppo"), also=("FB-2",)),
    _m(PpoMaxInsteadOfMin, "LOSS-4", formula("ppo"), also=("FB-2",)),
    _m(CispoUnclippedWeight, "LOSS-5", formula("cispo"), also=("FB-2",)),
    _m(CispoNoStopGradient, "LOSS-14", gradient("cispo"), also=("LOSS-5",)),
    _m(DroNoHalf, "LOSS-6", formula("dro"), also=("FB-2",)),
    _m(GspoTokenRatio, "LOSS-7", formula("gspo"), also=("FB-2",)),
    _m(GspoIgnoresMask, "LOSS-7", formula("gspo"), also=("FB-2",)),
    _m(GspoNoStopGradient, "LOSS-14", gradient("gspo"), also=("LOSS-7",)),
    _m(
        ClipTensorsIgnored,
        "LOSS-9",
        *(_node("test_per_position_clip_bounds_override_the_config", x) for x in ("ppo", "cispo", "gspo")),
    ),
    _m(ConfigIgnored, "LOSS-11", defaults("ppo"), defaults("dro"), also=("LOSS-4", "LOSS-6", "FB-2")),
    _m(SoftTargetsFirstColumn, "LOSS-12", _node("test_soft_targets"), also=("LOSS-2", "FB-2")),
    *(_m(globals()[f"MeanReduction_{x}"], "LOSS-1", formula(x), also=(_STATEMENT[x], "FB-2")) for x in _ALL),
    _m(WrongPpoDefaults, "LOSS-4", defaults("ppo"), also=("LOSS-11",)),
    _m(WrongCispoDefaults, "LOSS-5", defaults("cispo"), also=("LOSS-11",)),
    _m(WrongDroDefaults, "LOSS-6", defaults("dro"), also=("LOSS-11",)),
    _m(WrongGspoDefaults, "LOSS-7", defaults("gspo"), also=("LOSS-11",)),
]


# -- client layer: request validation (LOSS-8, LOSS-10, LOSS-13) ----------------------------------

MALFORMED = f"{LOSSES_MODULE}::test_malformed_loss_requests_are_refused"


class UnknownLossAccepted(IndependentBackend):
    """LOSS-8: an unknown ``loss_fn`` is not refused by validation (the provider fails at run time)."""

    name: ClassVar[str] = "mutant-unknown-loss"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std.client import validation

        original = validation._resolve_loss
        if not getattr(original, "_mutant", False):

            def resolve(loss_fn: Any, caps: Any, backend: str) -> Any:
                try:
                    return original(loss_fn, caps, backend)
                except Exception:
                    return original("cross_entropy", caps, backend)

            resolve._mutant = True  # type: ignore[attr-defined]
            replace_everywhere(original, resolve)


class ExtraInputsAccepted(IndependentBackend):
    """LOSS-10: inputs outside a loss's table are accepted (and ignored) instead of refused."""

    name: ClassVar[str] = "mutant-extra-inputs"
    ALL_INPUTS: ClassVar[tuple[str, ...]] = (
        "weights", "advantages", "logprobs", "clip_low_threshold", "clip_high_threshold", "sequence_ratio_mask",
    )  # fmt: skip

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std import loss_signatures

        table = loss_signatures.LOSS_SIGNATURES
        for name, sig in list(table.items()):
            optional = tuple(k for k in self.ALL_INPUTS if k not in sig.required_inputs)
            table[name] = dataclasses.replace(sig, optional_inputs=optional)  # type: ignore[index]

    def _datum_loss(self, loss_fn: str, lp: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
        keep = {"cross_entropy": ("target_tokens", "weights")}.get(loss_fn)
        return datum_loss(loss_fn, lp, {k: v for k, v in inputs.items() if keep is None or k in keep}, config)


class NonFiniteAccepted(IndependentBackend):
    """LOSS-13: NaN or infinite ``weights`` / ``advantages`` / ``logprobs`` are not refused."""

    name: ClassVar[str] = "mutant-non-finite"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std.client import validation

        original = validation._check_input
        if not getattr(original, "_mutant", False):

            def check(field: str, tensor: Any, dtype: str, shape: list[int], finite: bool) -> None:
                original(field, tensor, dtype, shape, False)

            check._mutant = True  # type: ignore[attr-defined]
            replace_everywhere(original, check)


MUTANTS += [
    _m(UnknownLossAccepted, "LOSS-8", MALFORMED),
    _m(ExtraInputsAccepted, "LOSS-10", MALFORMED),
    _m(NonFiniteAccepted, "LOSS-13", MALFORMED),
]
