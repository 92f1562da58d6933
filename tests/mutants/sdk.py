"""Mutants of the SDK-surface statements (spec/10-*.md, SDK).

Sequence ids (SDK-2), the ``record_stability_info`` flag (SDK-3), ``prompt_logprobs_last_n``
(SDK-4), the refusal of unsupported SDK extras (SDK-5), the choice between ``model_path`` and
``base_model`` (SMP-15) and ``compute_logprobs`` (SMP-16) are kept by the shared client layer
(``tinker_std.client.sampling``) for every backend, so each mutant replaces one of its functions
(``mutants._mock.PatchingMock``): a provider shipping its own client, or a server, with that bug.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import tinker_std as ts
from tinker_std.backends.mock import sampler as mock_sampler
from tinker_std.client import sampling
from tinker_std.types import SampleResponse

from . import Mutant
from ._mock import PatchingMock, replace
from ._patch import replace_everywhere

__all__ = ["MUTANTS"]


class SharedSequenceIdMock(PatchingMock):
    """SDK-2: every sampled sequence gets the same ``sequence_id``."""

    name: ClassVar[str] = "mock-shared-sequence-id"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _with_sequence_ids(response: SampleResponse) -> SampleResponse:
                sequences = [s.model_copy(update={"sequence_id": "seq-0"}) for s in response.sequences]
                return response.model_copy(update={"sequences": sequences})

            return _with_sequence_ids

        replace(sampling, "_with_sequence_ids", make)


class LastNIgnoredMock(PatchingMock):
    """SDK-4: ``prompt_logprobs_last_n`` is validated but has no effect (every position scored)."""

    name: ClassVar[str] = "mock-last-n-ignored"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def _keep_last(response: SampleResponse, last_n: int) -> SampleResponse:
                return response

            return _keep_last

        replace(sampling, "_keep_last", make)


class OptimizerIgnoredMock(PatchingMock):
    """SDK-5: ``create_lora_training_client(optimizer=...)`` with a non-Adam optimizer is accepted and
    ignored (AdamW used) instead of refused by name."""

    name: ClassVar[str] = "mock-optimizer-ignored"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def create_lora_training_client(self: Any, *args: Any, optimizer: Any = None, **kwargs: Any) -> Any:
                return original(self, *args, **kwargs)

            return create_lora_training_client

        replace(ts.ServiceClient, "create_lora_training_client", make)


class AltTokensGreedyMock(PatchingMock):
    """SDK-8: ``prompt_alt_tokens_k`` draws ignore the request's temperature (always the argmax)."""

    name: ClassVar[str] = "mock-alt-tokens-greedy"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def alt_draws(logits: Any, k: int, params: Any) -> Any:
                return original(logits, k, params.model_copy(update={"temperature": 0.0}))

            return alt_draws

        replace(mock_sampler, "alt_draws", make)


class AltTokensOffByOneMock(PatchingMock):
    """SDK-8: row ``i`` of ``prompt_alt_tokens`` is drawn from the distribution over ``prompt[i]``
    instead of ``prompt[i + 1]``."""

    name: ClassVar[str] = "mock-alt-tokens-off-by-one"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def alt_draws(logits: Any, k: int, params: Any) -> Any:
                return original(torch.cat([logits[:1], logits[:-1]]), k, params)

            return alt_draws

        replace(mock_sampler, "alt_draws", make)


class TargetOffByOneMock(PatchingMock):
    """SDK-7: ``target_prompt_logprobs`` cell ``[i, j]`` is scored at prompt position ``i`` (the
    distribution over ``prompt[i]``) instead of ``i + 1``: its rows are shifted by one."""

    name: ClassVar[str] = "mock-target-off-by-one"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def target_tensor(logits: Any, targets: Any) -> Any:
                if targets is None:
                    return None
                shifted = torch.cat([logits[:1], logits[:-1]])  # row i now predicts prompt[i]
                return original(shifted, targets)

            return target_tensor

        replace(mock_sampler, "target_tensor", make)


class SparseTargetZeroPaddedMock(PatchingMock):
    """SDK-7: a CSR ``target_prompt_logprobs`` is densified with 0, so its unlisted cells request
    token 0 (the server's old bug had it accepted that way)."""

    name: ClassVar[str] = "mock-sparse-target-zero-padded"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def check_target_ids(value: Any, *args: Any) -> Any:
                if isinstance(value, ts.TensorData):  # a plain copy forgets which cells a CSR tensor listed
                    value = ts.TensorData(data=list(value.data), dtype=value.dtype, shape=value.shape)
                return original(value, *args)

            return check_target_ids

        replace(sampling, "check_target_ids", make)


class TargetPlaceholderScoredMock(PatchingMock):
    """SDK-7: a ``-1`` cell of ``target_prompt_logprobs`` gets the logprob of token 0 instead of 0.0."""

    name: ClassVar[str] = "mock-target-placeholder-scored"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def target_tensor(logits: Any, targets: Any) -> Any:
                if targets is None:
                    return None
                return original(logits, tuple(tuple(max(t, 0) for t in row) for row in targets))

            return target_tensor

        replace(mock_sampler, "target_tensor", make)


class BaseModelPreferredMock(PatchingMock):
    """SMP-15: given both ``model_path`` and ``base_model``, the base model is sampled (the path is
    ignored) instead of the checkpoint."""

    name: ClassVar[str] = "mock-base-model-preferred"

    @classmethod
    def patch(cls) -> None:
        original = sampling.create_sampling_client
        if getattr(original, "__mutant__", False):
            return

        def create_sampling_client(session: Any, model_path: Any = None, base_model: Any = None, *a: Any) -> Any:
            return original(session, None if base_model is not None else model_path, base_model, *a)

        create_sampling_client.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, create_sampling_client)


class ScoredFirstEntryMock(PatchingMock):
    """SMP-16: ``compute_logprobs`` returns ``0.0`` for entry 0 (which has no context) instead of
    ``None``."""

    name: ClassVar[str] = "mock-scored-first-entry"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def compute_logprobs(self: Any, prompt: Any, prompt_logprobs_last_n: Any = None) -> Any:
                inner = original(self, prompt, prompt_logprobs_last_n)

                async def first_scored() -> list[float | None]:
                    values = await inner
                    return [0.0, *values[1:]] if values else values

                return self.session.submit(lambda backend: first_scored())

            return compute_logprobs

        replace(sampling.SamplingClient, "compute_logprobs", make)


class RecordFlagCoercedMock(PatchingMock):
    """SDK-3: ``record_stability_info`` takes any value and reads it as a truth value (``"yes"`` or
    ``1`` record) instead of refusing a non-bool by name."""

    name: ClassVar[str] = "mock-record-flag-coerced"

    @classmethod
    def patch(cls) -> None:
        original = sampling.create_sampling_client
        if getattr(original, "__mutant__", False):
            return

        def create_sampling_client(
            session: Any, model_path: Any = None, base_model: Any = None, record_stability_info: Any = False
        ) -> Any:
            return original(session, model_path, base_model, bool(record_stability_info))

        create_sampling_client.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, create_sampling_client)


def _m(cls: type, statement: str, test: str, also: tuple[str, ...] = ()) -> Mutant:
    return Mutant(
        backend=f"mutants.sdk:{cls.__name__}",
        statement=statement,
        selection=(f"tinker_std.conformance.{test}",),
        also=frozenset(also),
    )


MUTANTS = [
    _m(
        SharedSequenceIdMock,
        "SDK-2",
        "test_losses_v02::test_stable_reinforce_is_the_formula_of_the_recorded_logprobs",
        also=("SDK-3", "LOSS-16", "LOSS-19"),
    ),
    _m(OptimizerIgnoredMock, "SDK-5", "test_sdk_surface::test_sdk_features_outside_the_spec_are_refused_by_name"),
    _m(AltTokensGreedyMock, "SDK-8", "test_sdk_surface::test_prompt_alt_tokens_are_draws_from_each_prompt_position"),
    _m(AltTokensOffByOneMock, "SDK-8", "test_sdk_surface::test_prompt_alt_tokens_are_draws_from_each_prompt_position"),
    _m(TargetOffByOneMock, "SDK-7", "test_sdk_surface::test_target_prompt_logprobs_are_the_logprobs_of_the_named_ids"),
    _m(
        SparseTargetZeroPaddedMock,
        "SDK-7",
        "test_sdk_surface::test_target_prompt_logprobs_are_the_logprobs_of_the_named_ids",
    ),
    _m(
        TargetPlaceholderScoredMock,
        "SDK-7",
        "test_sdk_surface::test_target_prompt_logprobs_are_the_logprobs_of_the_named_ids",
    ),
    _m(
        BaseModelPreferredMock,
        "SMP-15",
        "test_sampling::test_creating_samplers_and_clients_for_unknown_models",
        also=("LORA-6", "ERR-4"),
    ),
    _m(ScoredFirstEntryMock, "SMP-16", "test_sampling::test_compute_logprobs_agrees_with_forward"),
    _m(
        RecordFlagCoercedMock,
        "SDK-3",
        "test_sdk_surface::test_sequence_ids_are_distinct_and_recording_changes_no_result",
        also=("SDK-2",),
    ),
    _m(LastNIgnoredMock, "SDK-4", "test_sdk_surface::test_prompt_logprobs_last_n_scores_only_the_tail"),
]
