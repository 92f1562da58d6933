"""Mutants of alignment, forward/forward_backward, custom losses and replays (ALN, FB, TOL).

Backend-side bugs are the independent float32 provider (``tests/independent_backend``) with one
seam broken. Statements the shared client layer keeps for every backend (chunk merging FB-9,
custom losses FB-10..FB-13, request validation ALN-3..ALN-5 and FB-8) are broken by replacing one
client-library function when the mutant is constructed (``mutants._patch``): a provider breaks
them only by shipping its own client (as a server reached through the ``tinker`` backend does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from independent_backend import IndependentBackend
from independent_backend.model import Adapter, logits_of

from tinker_std.backends.mock import MockBackend
from tinker_std.capabilities import Capabilities
from tinker_std.types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse, TensorData

from . import Mutant
from ._patch import replace_everywhere

BASE = "independent_backend:IndependentBackend"
TRAINING = "tinker_std.conformance.test_training"
LOSSES = "tinker_std.conformance.test_losses"
CUSTOM = "tinker_std.conformance.test_custom_losses"


class AlignmentOffByOne(IndependentBackend):
    """ALN-1: position ``i`` is scored with the logits of position ``i - 1`` (the provider shifts the
    already-shifted targets once more)."""

    name: ClassVar[str] = "mutant-alignment-off-by-one"

    def _target_logprobs(self, datum: Datum, adapter: Adapter) -> torch.Tensor:
        logits = self._logits(datum.model_input.to_ints(), adapter)
        shifted = torch.cat([logits[:1], logits[:-1]])
        logp = torch.nn.functional.log_softmax(shifted.float(), dim=-1)
        targets = torch.as_tensor(datum.loss_fn_inputs["target_tokens"].to_numpy(), dtype=torch.long)
        if targets.ndim == 1:
            return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logp.gather(-1, targets)


class FutureLeak(IndependentBackend):
    """ALN-2: attention without the causal mask: a position sees the tokens after it."""

    name: ClassVar[str] = "mutant-future-leak"

    def _logits(self, tokens: list[int], adapter: Adapter | None) -> torch.Tensor:
        return logits_of(tokens, adapter, self.dtype, causal=False)


class ForwardAccumulates(IndependentBackend):
    """FB-1: ``forward`` runs the backward pass too, adding its gradient to the accumulated one."""

    name: ClassVar[str] = "mutant-forward-accumulates"

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, True)


class ForwardBackwardMovesWeights(IndependentBackend):
    """FB-3: ``forward_backward`` also takes a small SGD step on the adapter."""

    name: ClassVar[str] = "mutant-fb-moves-weights"

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        if backward:
            with torch.no_grad():
                for p in self._model(model_id).adapter.params.values():
                    if p.grad is not None:
                        p -= 1e-3 * p.grad
        return out


class _GradientRewrite(IndependentBackend):
    """Rewrites the accumulated gradient around each backward call: ``rewrite(before, added)``."""

    @staticmethod
    def rewrite(before: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        params = self._model(model_id).adapter.params
        before = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in params.items()}
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        if backward:
            for n, p in params.items():
                if p.grad is not None:
                    p.grad = self.rewrite(before[n], p.grad - before[n])
        return out


class GradientOverwritten(_GradientRewrite):
    """FB-4: each ``forward_backward`` replaces the accumulated gradient instead of adding to it."""

    name: ClassVar[str] = "mutant-gradient-overwritten"

    @staticmethod
    def rewrite(before: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        return added


class GradientDoubled(_GradientRewrite):
    """FB-4: the gradient already accumulated is counted twice when the next call adds to it."""

    name: ClassVar[str] = "mutant-gradient-doubled"

    @staticmethod
    def rewrite(before: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        return 2 * before + added


class StepKeepsGradient(IndependentBackend):
    """FB-5: ``optim_step`` leaves the consumed gradient in place, so the next step reuses it."""

    name: ClassVar[str] = "mutant-step-keeps-gradient"

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        tensors = self._model(model_id).adapter.params.values()
        kept = [None if p.grad is None else p.grad.clone() for p in tensors]
        out = await super().optim_step(model_id, params)
        for p, g in zip(tensors, kept, strict=True):
            p.grad = g
        return out


class OutputsReversed(IndependentBackend):
    """FB-2: ``loss_fn_outputs`` come back in reverse datum order."""

    name: ClassVar[str] = "mutant-outputs-reversed"

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        return out.model_copy(update={"loss_fn_outputs": out.loss_fn_outputs[::-1]})


class LeftPaddedBatch(IndependentBackend):
    """FB-6: datums are left-padded to the batch's longest with token 0 and no attention mask, so a
    datum's outputs depend on the other datums of the call."""

    name: ClassVar[str] = "mutant-left-padded-batch"
    _pad: int = 0

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        self._longest = max(d.model_input.length for d in data)
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)

    def _target_logprobs(self, datum: Datum, adapter: Adapter) -> torch.Tensor:
        n = datum.model_input.length
        tokens = [0] * (self._longest - n) + datum.model_input.to_ints()
        logits = self._logits(tokens, adapter)[-n:]
        logp = torch.nn.functional.log_softmax(logits.float(), dim=-1)
        targets = torch.as_tensor(datum.loss_fn_inputs["target_tokens"].to_numpy(), dtype=torch.long)
        if targets.ndim == 1:
            return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logp.gather(-1, targets)


class LossMetricRenamed(IndependentBackend):
    """FB-7: the loss is reported as ``loss:mean`` (holding the sum) and ``loss:sum`` is missing."""

    name: ClassVar[str] = "mutant-loss-metric-renamed"

    async def forward_backward(self, model_id, data, loss_fn, loss_fn_config, backward):  # type: ignore[no-untyped-def]
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        return out.model_copy(update={"metrics": {"loss:mean": out.metrics["loss:sum"]}})


class NoisyReplays(IndependentBackend):
    """TOL-4: every forward pass adds fresh noise of 1e-3 to the logits, beyond the fp32 tolerance."""

    name: ClassVar[str] = "mutant-noisy-replays"
    noise: ClassVar[float] = 1e-3

    def _logits(self, tokens: list[int], adapter: Adapter | None) -> torch.Tensor:
        logits = super()._logits(tokens, adapter)
        return logits + self.noise * torch.randn(
            logits.shape, generator=torch.Generator().manual_seed(random.getrandbits(62))
        )


class FalselyDeterministic(NoisyReplays):
    """TOL-4: declares ``deterministic`` but its replays differ by float noise (1e-7, within fp32)."""

    name: ClassVar[str] = "mutant-falsely-deterministic"
    capabilities: ClassVar[Capabilities] = Capabilities(
        optional=IndependentBackend.capabilities.optional | {"deterministic"}, tolerance="fp32"
    )
    noise: ClassVar[float] = 1e-6


# -- client layer: chunk merging and custom losses -------------------------------------------------


def _merge_keeping_last_sum(outputs: Sequence[ForwardBackwardOutput], counts: Sequence[int]) -> ForwardBackwardOutput:
    """FB-9 broken: chunk outputs concatenated, but ``loss:sum`` is the last chunk's, not the sum."""
    merged = [o for out in outputs for o in out.loss_fn_outputs]
    return ForwardBackwardOutput(loss_fn_outputs=merged, metrics=dict(outputs[-1].metrics))


class ChunkSumNotSummed(MockBackend):
    """FB-9: the client layer's chunk merge keeps the last chunk's ``loss:sum``. On the mock: the
    client layer splits a ``forward_backward`` into chunks only for a backend that can snapshot its
    gradient (FB-14), which the independent provider does not."""

    name: ClassVar[str] = "mutant-chunk-sum"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std.client import chunking

        if chunking.merge_outputs is not _merge_keeping_last_sum:
            replace_everywhere(chunking.merge_outputs, _merge_keeping_last_sum)


def _custom_loss_variant(kind: str) -> Any:
    """A broken ``run_custom_loss`` (the client layer's surrogate, FB-10..FB-13)."""
    from tinker_std.client import custom_loss

    original = custom_loss.run_custom_loss

    async def broken(data: list[Datum], fn: Any, run_ce: Any) -> ForwardBackwardOutput:
        if kind == "sign":  # FB-11: the surrogate phase gets weights +dL/dlp (values reported as usual)

            async def run_ce_negated(chunk: list[Datum], backward: bool) -> ForwardBackwardOutput:
                if backward:
                    chunk = [
                        Datum(
                            model_input=d.model_input,
                            loss_fn_inputs={
                                **d.loss_fn_inputs,
                                "weights": TensorData.from_numpy(-d.loss_fn_inputs["weights"].to_numpy()),
                            },
                        )
                        for d in chunk
                    ]
                return await run_ce(chunk, backward)

            return await original(data, fn, run_ce_negated)
        if kind == "stripped":  # FB-10: loss_fn sees target_tokens only
            stripped = [
                Datum(model_input=d.model_input, loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"]})
                for d in data
            ]
            return await original(data, lambda d, lps: fn(stripped, lps), run_ce)
        if kind == "metrics":  # FB-12: loss:sum reports the surrogate's value, user metrics dropped
            out = await original(data, fn, run_ce)
            return out.model_copy(update={"metrics": {"loss:sum": out.metrics["surrogate_loss:sum"]}})
        if kind == "failure":  # FB-13: a failing loss_fn still accumulates a cross-entropy gradient
            try:
                return await original(data, fn, run_ce)
            except Exception:
                plain = [
                    Datum(
                        model_input=d.model_input, loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"]}
                    )
                    for d in data
                ]
                await run_ce(plain, True)
                raise
        raise ValueError(kind)

    return original, broken


class _CustomLossMutant(IndependentBackend):
    kind: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std.client import custom_loss

        if not getattr(custom_loss.run_custom_loss, "_mutant", False):
            original, broken = _custom_loss_variant(self.kind)
            broken._mutant = True
            replace_everywhere(original, broken)


class CustomLossWrongSign(_CustomLossMutant):
    """FB-11: the surrogate cross-entropy gets weights ``+dL/dlp``: the gradient points uphill
    (``surrogate_loss:sum`` then has the wrong sign too, FB-12)."""

    name: ClassVar[str] = "mutant-custom-wrong-sign"
    kind: ClassVar[str] = "sign"


class CustomLossStrippedData(_CustomLossMutant):
    """FB-10: ``loss_fn`` receives the datums with ``target_tokens`` only."""

    name: ClassVar[str] = "mutant-custom-stripped-data"
    kind: ClassVar[str] = "stripped"


class CustomLossMetricsLost(_CustomLossMutant):
    """FB-12: ``loss:sum`` is the surrogate's value and ``loss_fn``'s metrics are dropped."""

    name: ClassVar[str] = "mutant-custom-metrics"
    kind: ClassVar[str] = "metrics"


class CustomLossFailureAccumulates(_CustomLossMutant):
    """FB-13: when ``loss_fn`` raises, a plain cross-entropy gradient is still accumulated."""

    name: ClassVar[str] = "mutant-custom-failure-accumulates"
    kind: ClassVar[str] = "failure"


def _m(cls: type, statement: str, *selection: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(f"mutants.training:{cls.__name__}", statement, selection, base=BASE, also=frozenset(also))


def _t(test: str) -> str:
    return f"{TRAINING}::{test}"


def _l(test: str, param: str | None = None) -> str:
    return f"{LOSSES}::{test}" + (f"[{param}]" if param else "")


MUTANTS: list[Mutant] = [
    _m(AlignmentOffByOne, "ALN-1", _t("test_position_i_is_scored_against_target_i"), also=("SMP-16",)),
    _m(FutureLeak, "ALN-2", _l("test_a_positions_logprob_ignores_later_tokens")),
    _m(ForwardAccumulates, "FB-1", _t("test_forward_is_pure_and_repeatable")),
    _m(ForwardBackwardMovesWeights, "FB-3", _t("test_forward_backward_changes_no_weight_or_optimizer_state")),
    _m(GradientOverwritten, "FB-4", _t("test_gradients_accumulate_by_summation")),
    _m(GradientDoubled, "FB-4", _t("test_gradients_accumulate_by_summation")),
    _m(StepKeepsGradient, "FB-5", _t("test_optim_step_consumes_the_gradient")),
    _m(
        OutputsReversed,
        "FB-2",
        _l("test_loss_sum_is_the_formula_of_the_returned_logprobs", "cross_entropy"),
        also=("LOSS-2",),
    ),
    _m(LeftPaddedBatch, "FB-6", _l("test_a_datums_outputs_do_not_depend_on_the_rest_of_the_batch")),
    _m(LossMetricRenamed, "FB-7", _l("test_metric_keys_are_name_colon_reduction", "cross_entropy")),
    _m(NoisyReplays, "TOL-4", _t("test_forward_is_pure_and_repeatable"), also=("FB-1",)),
    _m(FalselyDeterministic, "TOL-4", _t("test_forward_is_pure_and_repeatable"), also=("FB-1",)),
    Mutant(f"mutants.training:{ChunkSumNotSummed.__name__}", "FB-9", (_t("test_chunk_size_one_equals_one_call"),)),
    _m(CustomLossWrongSign, "FB-11", f"{CUSTOM}::test_custom_cross_entropy_equals_the_builtin", also=("FB-12",)),
    _m(CustomLossStrippedData, "FB-10", f"{CUSTOM}::test_custom_cross_entropy_equals_the_builtin"),
    _m(CustomLossMetricsLost, "FB-12", f"{CUSTOM}::test_custom_cross_entropy_equals_the_builtin"),
    _m(
        CustomLossFailureAccumulates,
        "FB-13",
        *(f"{CUSTOM}::test_a_failing_custom_loss_fails_its_future_only[{c}]" for c in ("raises",)),
    ),
]


# -- client layer: request validation (ALN-3..ALN-5, FB-8) -----------------------------------------

MALFORMED = f"{TRAINING}::test_malformed_data_is_refused"


class _ValidationMutant(IndependentBackend):
    """Replaces one validation function of ``tinker_std.client.validation`` with ``wrap(original)``."""

    function: ClassVar[str] = ""

    @staticmethod
    def wrap(original: Any) -> Any:
        raise NotImplementedError

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from tinker_std.client import validation

        original = getattr(validation, self.function)
        if not getattr(original, "_mutant", False):
            broken = self.wrap(original)
            broken._mutant = True
            replace_everywhere(original, broken)


class ContextLengthUnchecked(_ValidationMutant):
    """ALN-5: ``N > max_context_length`` is not refused (the provider then fails at run time)."""

    name: ClassVar[str] = "mutant-context-unchecked"
    function: ClassVar[str] = "_check_tokens"

    @staticmethod
    def wrap(original: Any) -> Any:
        return lambda field, tokens, vocab_size, max_len: original(field, tokens, vocab_size, 10**9)


class VocabularyUnchecked(_ValidationMutant):
    """ALN-4: token ids ``>= V`` are not refused."""

    name: ClassVar[str] = "mutant-vocab-unchecked"
    function: ClassVar[str] = "_check_tokens"

    @staticmethod
    def wrap(original: Any) -> Any:
        return lambda field, tokens, vocab_size, max_len: original(field, tokens, 10**9, max_len)


class ShapesUnchecked(_ValidationMutant):
    """ALN-3: ``loss_fn_inputs`` shapes and dtypes are not checked (finiteness still is)."""

    name: ClassVar[str] = "mutant-shapes-unchecked"
    function: ClassVar[str] = "_check_input"

    @staticmethod
    def wrap(original: Any) -> Any:
        return lambda field, tensor, dtype, shape, finite: original(
            field, tensor, tensor.dtype, tensor.resolved_shape, finite
        )


class EmptyDataAccepted(_ValidationMutant):
    """FB-8: an empty ``data`` list reaches the provider instead of a ``BadRequestError``."""

    name: ClassVar[str] = "mutant-empty-data"
    function: ClassVar[str] = "_check_data_list"

    @staticmethod
    def wrap(original: Any) -> Any:
        return lambda data: [] if isinstance(data, list) and not data else original(data)


MUTANTS += [
    _m(ContextLengthUnchecked, "ALN-5", MALFORMED),
    _m(VocabularyUnchecked, "ALN-4", MALFORMED),
    _m(ShapesUnchecked, "ALN-3", MALFORMED),
    _m(EmptyDataAccepted, "FB-8", MALFORMED),
]
