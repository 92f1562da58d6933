"""Mutants of spec 07 (SMP): broken sampling on the mock backend, one statement each.

The mock's decode loop (``backends/mock/sampler.py``) calls ``choose_token``, ``sequence_generator``
and ``StopRule`` through its module globals; a mutant swaps one of them for the duration of its
own ``sample`` call (which never suspends, so nothing else runs meanwhile), or rewrites the response.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from tinker_std.backend import SampleRequest
from tinker_std.backends.mock import MockBackend
from tinker_std.backends.mock import sampler as mock_sampler
from tinker_std.capabilities import OPTIONAL_CAPABILITIES, Capabilities
from tinker_std.sampling_rules import SEED_STRIDE, choose_token, draw_in_id_order
from tinker_std.types import SampleResponse, SamplingParams

from . import Mutant

__all__ = [
    "MUTANTS",
    "TemperatureIgnoredMock",
    "TopKOffByOneMock",
    "TopPCrossingTokenDroppedMock",
    "StopTokensIgnoredMock",
    "SeedsDependOnNumSamplesMock",
    "Float32SeededDrawMock",
    "PromptLogprobsShiftedMock",
    "PromptLogprobsUnaskedMock",
    "ProcessedLogprobsMock",
]


@contextmanager
def _swapped(name: str, value: Any) -> Iterator[None]:
    old = getattr(mock_sampler, name)
    setattr(mock_sampler, name, value)
    try:
        yield
    finally:
        setattr(mock_sampler, name, old)


class _SwappingMock(MockBackend):
    """Runs ``sample`` with one global of the mock's decode loop replaced by ``replacement``."""

    target: ClassVar[str] = "choose_token"

    def replacement(self, request: SampleRequest) -> Any:
        raise NotImplementedError

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        with _swapped(self.target, self.replacement(request)):
            return await super().sample(sampler_id, request)


def _filtered_draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, keep_fn: Any) -> int:
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_probs, ids = torch.sort(probs, descending=True, stable=True)
    kept = torch.zeros_like(probs)
    keep = ids[: keep_fn(sorted_probs, params)]
    kept[keep] = probs[keep]
    return draw_in_id_order(kept, generator)


class TemperatureIgnoredMock(_SwappingMock):
    """SMP-10: every draw at temperature 1 (``temperature = 0`` is still greedy); ``seeded_sampling``
    not declared, so only the unseeded statistical test can see it."""

    name: ClassVar[str] = "mock-temperature-ignored"
    capabilities: ClassVar[Capabilities] = Capabilities(
        optional=OPTIONAL_CAPABILITIES - {"seeded_sampling"}, tolerance="mock"
    )

    def replacement(self, request: SampleRequest) -> Any:
        def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
            if params.temperature > 0:
                params = params.model_copy(update={"temperature": 1.0})
            return choose_token(logits, params, generator)

        return choose


class TopKOffByOneMock(_SwappingMock):
    """SMP-11: ``top_k = k`` keeps ``k + 1`` tokens."""

    name: ClassVar[str] = "mock-top-k-off-by-one"

    def replacement(self, request: SampleRequest) -> Any:
        def keep(sorted_probs: torch.Tensor, params: SamplingParams) -> int:
            n = sorted_probs.numel() if params.top_k == -1 else min(params.top_k + 1, sorted_probs.numel())
            if params.top_p < 1.0:
                top = sorted_probs[:n] / sorted_probs[:n].sum()
                n = min(int((torch.cumsum(top, 0) < params.top_p).sum()) + 1, n)
            return n

        def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
            if params.top_k == -1 and params.top_p >= 1.0:
                return choose_token(logits, params, generator)
            return _filtered_draw(logits, params, generator, keep)

        return choose


class TopPCrossingTokenDroppedMock(_SwappingMock):
    """SMP-11: ``top_p`` keeps only the tokens whose cumulative probability stays below ``top_p``
    (the token that crosses it is dropped; at least one kept)."""

    name: ClassVar[str] = "mock-top-p-exclusive"

    def replacement(self, request: SampleRequest) -> Any:
        def keep(sorted_probs: torch.Tensor, params: SamplingParams) -> int:
            n = sorted_probs.numel() if params.top_k == -1 else min(params.top_k, sorted_probs.numel())
            if params.top_p < 1.0:
                top = sorted_probs[:n] / sorted_probs[:n].sum()
                n = max(1, min(int((torch.cumsum(top, 0) < params.top_p).sum()), n))
            return n

        def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
            if params.top_k == -1 and params.top_p >= 1.0:
                return choose_token(logits, params, generator)
            return _filtered_draw(logits, params, generator, keep)

        return choose


class StopTokensIgnoredMock(MockBackend):
    """SMP-6: stop token ids are not applied (stop strings and EOS still are)."""

    name: ClassVar[str] = "mock-stop-tokens-ignored"

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        stop = request.sampling_params.stop
        if isinstance(stop, list) and any(isinstance(s, int) for s in stop):
            strings = [s for s in stop if isinstance(s, str)]
            params = request.sampling_params.model_copy(update={"stop": strings})
            request = SampleRequest(
                request.prompt,
                request.num_samples,
                params,
                request.include_prompt_logprobs,
                request.topk_prompt_logprobs,
            )
        return await super().sample(sampler_id, request)


class SeedsDependOnNumSamplesMock(_SwappingMock):
    """SMP-12: sequence ``j``'s generator is seeded with ``(seed, j, num_samples)``."""

    name: ClassVar[str] = "mock-seeds-depend-on-num-samples"
    target: ClassVar[str] = "sequence_generator"

    def replacement(self, request: SampleRequest) -> Any:
        def generator(seed: int | None, index: int) -> torch.Generator:
            if seed is None:
                return torch.Generator().manual_seed(secrets.randbits(63))
            return torch.Generator().manual_seed((seed * SEED_STRIDE + index + 7 * request.num_samples) % 2**63)

        return generator


class Float32SeededDrawMock(_SwappingMock):
    """SMP-20: the seeded draw runs in float32 (softmax, uniforms and CDF), not float64."""

    name: ClassVar[str] = "mock-float32-draw"

    def replacement(self, request: SampleRequest) -> Any:
        def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
            return choose_token(logits.to(torch.float32), params, generator)

        return choose


class PromptLogprobsShiftedMock(MockBackend):
    """SMP-16 (and SMP-13): prompt logprobs shifted by one position (entry ``i`` scores
    ``prompt[i - 1]``); ``compute_logprobs`` reads them, so its check (SMP-16) fails first."""

    name: ClassVar[str] = "mock-prompt-logprobs-shifted"

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        response = await super().sample(sampler_id, request)
        lps = response.prompt_logprobs
        if lps is None or len(lps) < 3:
            return response
        return response.model_copy(update={"prompt_logprobs": [None, None, *lps[1:-1]]})


class PromptLogprobsUnaskedMock(MockBackend):
    """SMP-13: ``prompt_logprobs`` is returned even with ``include_prompt_logprobs=False``."""

    name: ClassVar[str] = "mock-prompt-logprobs-unasked"

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        return await super().sample(sampler_id, dataclasses.replace(request, include_prompt_logprobs=True))


class ProcessedLogprobsMock(_SwappingMock):
    """SMP-3: sampled logprobs are those of the temperature-scaled distribution (at temperature 0,
    the greedy one: close to one-hot)."""

    name: ClassVar[str] = "mock-processed-logprobs"
    target: ClassVar[str] = "torch"

    def replacement(self, request: SampleRequest) -> Any:
        temperature = request.sampling_params.temperature
        temperature = 1e-3 if temperature == 0 else temperature

        class _Torch:
            def __getattr__(self, name: str) -> Any:
                return getattr(torch, name)

            @staticmethod
            def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
                return torch.log_softmax(x / temperature, dim=dim)

        return _Torch()


_S = "tinker_std.conformance.test_sampling::"
_STATS = _S + "test_unseeded_draws_follow_the_temperature_and_the_filters"

MUTANTS: list[Mutant] = [
    Mutant("mutants.sampling:TemperatureIgnoredMock", "SMP-10", (_STATS,)),
    Mutant("mutants.sampling:TopKOffByOneMock", "SMP-11", (_STATS,)),
    Mutant("mutants.sampling:TopPCrossingTokenDroppedMock", "SMP-11", (_STATS,)),
    Mutant(
        "mutants.sampling:StopTokensIgnoredMock",
        "SMP-6",
        (_S + "test_stop_tokens_and_strings", _S + "test_unseeded_sampling_stops_at_the_first_stop_token"),
        also=frozenset({"SMP-8", "SMP-9"}),
    ),
    Mutant(
        "mutants.sampling:SeedsDependOnNumSamplesMock",
        "SMP-12",
        (_S + "test_seeded_sampling_is_reproducible_per_sequence",),
    ),
    Mutant("mutants.sampling:Float32SeededDrawMock", "SMP-20", (_S + "test_seeded_draws_follow_draw_rule_2",)),
    Mutant(
        "mutants.sampling:PromptLogprobsShiftedMock",
        "SMP-16",
        (_S + "test_compute_logprobs_agrees_with_forward",),
        also=frozenset({"SMP-13"}),
    ),
    Mutant(
        "mutants.sampling:PromptLogprobsUnaskedMock",
        "SMP-13",
        (_S + "test_sampled_sequences_obey_lengths_stops_and_report_raw_logprobs",),
    ),
    Mutant(
        "mutants.sampling:ProcessedLogprobsMock",
        "SMP-3",
        (_S + "test_sampled_sequences_obey_lengths_stops_and_report_raw_logprobs",),
    ),
]
