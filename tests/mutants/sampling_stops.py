"""Mutants of the sampling statements added in spec 0.2 (SMP-1, SMP-2, SMP-4, SMP-5, SMP-7, SMP-8,
SMP-9, SMP-14, SMP-18): the mock backend with its request's stop rule or seed, its token budget,
its response's sequences or its snapshot samplers' weights altered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tinker_std import sampling_rules
from tinker_std.backend import SampleRequest, SamplerSpec
from tinker_std.backends.mock import MockBackend
from tinker_std.types import SampledSequence, SampleResponse

from . import Mutant
from .sampling import _SwappingMock

__all__ = ["MUTANTS"]

S = "tinker_std.conformance.test_sampling::"


class _StopRewriteMock(MockBackend):
    """Runs ``sample`` with ``sampling_params.stop`` rewritten by ``stop_for``."""

    def stop_for(self, stop: Any) -> Any:
        raise NotImplementedError

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        params = request.sampling_params.model_copy(update={"stop": self.stop_for(request.sampling_params.stop)})
        return await super().sample(sampler_id, dataclasses.replace(request, sampling_params=params))


class EosIgnoredMock(_StopRewriteMock):
    """SMP-4: with ``stop = None`` the EOS token does not stop a sequence (it runs to ``max_tokens``)."""

    name: ClassVar[str] = "mock-eos-ignored"

    def stop_for(self, stop: Any) -> Any:
        return [] if stop is None else stop


class EmptyStopKeepsEosMock(_StopRewriteMock):
    """SMP-7: ``stop = []`` is taken as "no stop given", so EOS still stops the sequence."""

    name: ClassVar[str] = "mock-empty-stop-keeps-eos"

    def stop_for(self, stop: Any) -> Any:
        return None if stop == [] else stop


class StopStringsIgnoredMock(_StopRewriteMock):
    """SMP-5: stop strings are not applied (stop token ids still are)."""

    name: ClassVar[str] = "mock-stop-strings-ignored"

    def stop_for(self, stop: Any) -> Any:
        if isinstance(stop, str):
            return []
        return [s for s in stop if not isinstance(s, str)] if isinstance(stop, list) else stop


class MaxTokensDefaultOffByOneMock(_SwappingMock):
    """SMP-2: ``max_tokens = None`` means ``C - P - 1`` instead of ``C - P``."""

    name: ClassVar[str] = "mock-max-tokens-default-off-by-one"
    target: ClassVar[str] = "token_budget"

    def replacement(self, request: SampleRequest) -> Any:
        def token_budget(prompt: Any, params: Any, vocab_size: int, max_context_length: int) -> int:
            budget = sampling_rules.token_budget(prompt, params, vocab_size, max_context_length)
            return budget - 1 if params.max_tokens is None and budget > 1 else budget

        return token_budget


class _SequenceRewriteMock(MockBackend):
    """Runs ``sample`` and rewrites every returned sequence with ``rewrite``."""

    def rewrite(self, seq: SampledSequence) -> SampledSequence:
        raise NotImplementedError

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        response = await super().sample(sampler_id, request)
        return response.model_copy(update={"sequences": [self.rewrite(s) for s in response.sequences]})


class StopReasonAlwaysLengthMock(_SequenceRewriteMock):
    """SMP-9: every sequence reports ``stop_reason = "length"``, even one ended by a stop."""

    name: ClassVar[str] = "mock-stop-reason-always-length"

    def rewrite(self, seq: SampledSequence) -> SampledSequence:
        return seq.model_copy(update={"stop_reason": "length"})


class LogprobsOneShortMock(_SequenceRewriteMock):
    """SMP-1: ``logprobs`` lacks the last sampled token's entry (``len(logprobs) == len(tokens) - 1``)."""

    name: ClassVar[str] = "mock-logprobs-one-short"

    def rewrite(self, seq: SampledSequence) -> SampledSequence:
        return seq.model_copy(update={"logprobs": None if seq.logprobs is None else seq.logprobs[:-1]})


class StopCheckedLateMock(MockBackend):
    """SMP-8: a sequence ended by a stop goes on for one more token (the stop is checked one token
    late; the extra token here repeats the stop token)."""

    name: ClassVar[str] = "mock-stop-checked-late"

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        response = await super().sample(sampler_id, request)
        limit = request.sampling_params.max_tokens
        sequences = []
        for seq in response.sequences:
            if seq.stop_reason == "stop" and limit is not None and len(seq.tokens) < limit:
                logprobs = None if seq.logprobs is None else [*seq.logprobs, seq.logprobs[-1]]
                seq = seq.model_copy(update={"tokens": [*seq.tokens, seq.tokens[-1]], "logprobs": logprobs})
            sequences.append(seq)
        return response.model_copy(update={"sequences": sequences})


class SnapshotRefreshedMock(MockBackend):
    """SMP-14: a snapshot sampler serves its captured weights for its first request only; later
    requests re-read the training client's current weights (a cache that expires)."""

    name: ClassVar[str] = "mock-snapshot-refreshed"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._sources: dict[str, str] = {}
        self._served: dict[str, int] = {}

    async def create_sampler(self, **kwargs: Any) -> SamplerSpec:
        spec = await super().create_sampler(**kwargs)
        if kwargs.get("model_id") is not None:
            self._sources[spec.sampler_id] = kwargs["model_id"]
        return spec

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        self._served[sampler_id] = self._served.get(sampler_id, 0) + 1
        source = self._models.get(self._sources.get(sampler_id, ""))
        state = self._samplers.get(sampler_id)
        if self._served[sampler_id] > 1 and source is not None and state is not None:
            self._samplers[sampler_id] = dataclasses.replace(state, adapter=source.adapter.snapshot())
        return await super().sample(sampler_id, request)


class AdapterSeedOffsetMock(MockBackend):
    """SMP-18: a sampler with an adapter offsets the seed by one, so a fresh adapter samples other
    tokens than its base model under the same seed (scores are unchanged)."""

    name: ClassVar[str] = "mock-adapter-seed-offset"

    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        state = self._samplers.get(sampler_id)
        seed = request.sampling_params.seed
        if state is not None and state.adapter is not None and seed is not None:
            params = request.sampling_params.model_copy(update={"seed": seed + 1})
            request = dataclasses.replace(request, sampling_params=params)
        return await super().sample(sampler_id, request)


def _m(cls: type, statement: str, *tests: str, also: tuple[str, ...] = (), slow: bool = False) -> Mutant:
    return Mutant(
        backend=f"mutants.sampling_stops:{cls.__name__}",
        statement=statement,
        selection=tuple(S + t for t in tests),
        also=frozenset(also),
        slow=slow,
    )


_EOS = "test_eos_stops_by_default_and_only_by_default"

MUTANTS = [
    _m(EosIgnoredMock, "SMP-4", _EOS, also=("SMP-8", "SMP-9"), slow=True),
    _m(EmptyStopKeepsEosMock, "SMP-7", _EOS, also=("SMP-4", "SMP-8", "SMP-9"), slow=True),
    _m(StopStringsIgnoredMock, "SMP-5", "test_stop_tokens_and_strings", also=("SMP-8", "SMP-9")),
    _m(MaxTokensDefaultOffByOneMock, "SMP-2", "test_max_tokens_defaults_to_the_rest_of_the_context"),
    _m(StopCheckedLateMock, "SMP-8", "test_unseeded_sampling_stops_at_the_first_stop_token", also=("SMP-6", "SMP-9")),
    _m(SnapshotRefreshedMock, "SMP-14", "test_a_snapshot_sampler_does_not_move", also=("ORD-13",)),
    _m(AdapterSeedOffsetMock, "SMP-18", "test_a_fresh_adapter_behaves_like_the_base_model"),
    _m(StopReasonAlwaysLengthMock, "SMP-9", "test_stop_tokens_and_strings", also=("SMP-8",)),
    _m(
        LogprobsOneShortMock,
        "SMP-1",
        "test_sampled_sequences_obey_lengths_stops_and_report_raw_logprobs",
        also=("SMP-3",),
    ),
]
