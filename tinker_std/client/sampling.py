"""``SamplingClient``: sample from fixed weights and score prompts (spec SMP)."""

from __future__ import annotations

import math
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from ..backend import SampleRequest, SamplerSpec, Tokenizer
from ..errors import BadRequestError, Unsupported
from ..futures import APIFuture
from ..types import ModelInput, SampleResponse, SamplingParams, TensorData
from .sampler_handles import SamplerOrigin, decode_handle, encode_handle, release, retain
from .validation import validate_sample

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = ["SamplingClient"]


class SamplingClient:
    """Samples from one set of weights. Sampling requests are independent and may run concurrently.

    Every returned sequence carries a ``sequence_id`` unique to this ``ServiceClient`` (SDK-2).
    With ``record_stability_info`` every sample is recorded for ``stable_reinforce`` (SDK-3).

    When the object is garbage collected, the backend is told it may free the sampler (SMP-19), so
    a loop that takes a fresh snapshot sampler every step does not accumulate adapter copies."""

    def __init__(
        self,
        service: ServiceClient,
        spec: SamplerSpec,
        record_stability_info: bool = False,
        origin: SamplerOrigin | None = None,
    ) -> None:
        self._service = service
        self.spec = spec
        self.record_stability_info = bool(record_stability_info)
        self.origin = origin or SamplerOrigin()
        retain(service, spec, self.origin)
        weakref.finalize(self, release, service, spec.sampler_id)

    # -- handles (tinker 0.38): pass a sampler to another process --------------------------------

    def get_sampler_handle(self) -> str:
        """A string naming this sampler, for ``from_sampler_handle`` here or in another process
        (``tinker_std.client.sampler_handles``); it carries no weights and no credentials."""
        return encode_handle(self)

    @staticmethod
    def from_sampler_handle(handle: str, *, api_key: str | None = None) -> SamplingClient:
        """A client of the sampler behind ``handle``. ``api_key`` is for hosted services: an
        in-process backend takes none, so a key is a ``BadRequestError`` naming it."""
        if api_key is not None:
            raise BadRequestError("api_key", "an in-process backend takes no API key")
        return decode_handle(handle)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle as its handle: another process gets a client of the same weights."""
        return (decode_handle, (encode_handle(self),))

    @property
    def sampler_id(self) -> str:
        return self.spec.sampler_id

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> APIFuture[SampleResponse]:
        """Sample ``num_samples`` completions of ``prompt``; returns a future at once.

        ``prompt_logprobs_last_n`` scores only the last N prompt positions (SDK-4);
        ``topk_sample_logprobs = k`` returns each sampled position's top-k raw logprobs
        (capability ``topk_sample_logprobs``, SDK-6); ``target_prompt_logprobs`` and
        ``prompt_alt_tokens_k`` are not part of spec 0.2 and any non-default value is a
        ``BadRequestError`` naming it (SDK-5)."""
        service = self._service
        _refuse_sampling_extras(target_prompt_logprobs, prompt_alt_tokens_k)
        topk_sample = _check_topk_sample(topk_sample_logprobs, service)
        tokens, params = validate_sample(
            prompt,
            num_samples,
            sampling_params,
            topk_prompt_logprobs,
            self.spec,
            service.capabilities,
            service.backend_name,
        )
        last_n = _check_last_n(prompt_logprobs_last_n, len(tokens), include_prompt_logprobs, topk_prompt_logprobs)
        request = SampleRequest(
            tokens, num_samples, params, bool(include_prompt_logprobs), topk_prompt_logprobs, topk_sample
        )
        records = service.stability_records if self.record_stability_info else None

        async def run() -> SampleResponse:
            response = await service.backend.sample(self.spec.sampler_id, request)
            response = _with_sequence_ids(response)
            if last_n is not None:
                response = _keep_last(response, last_n)
            if records is not None:
                records.record(tokens, response.sequences)
            return response

        return service._submit(lambda backend: run())

    async def sample_async(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams, **kwargs: Any
    ) -> SampleResponse:
        """Like ``sample`` but resolves to the response itself."""
        return await self.sample(prompt, num_samples, sampling_params, **kwargs)

    def compute_logprobs(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> APIFuture[list[float | None]]:
        """``log p(prompt[i] | prompt[:i])`` for every position; entry 0 is ``None`` (SMP-10); with
        ``prompt_logprobs_last_n`` only the last N entries are scored (SDK-4)."""
        inner = self.sample(
            prompt,
            1,
            SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )

        async def extract() -> list[float | None]:
            response = await inner
            values = response.prompt_logprobs or []
            return [None if v is None or math.isnan(v) else v for v in values]

        return self._service._submit(lambda backend: extract())

    async def compute_logprobs_async(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    def get_tokenizer(self) -> Tokenizer:
        return self._service._backend.get_tokenizer(self.spec.base_model)

    def get_base_model(self) -> str:
        return self.spec.base_model


def _check_topk_sample(value: Any, service: ServiceClient) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError("topk_sample_logprobs", f"must be an int >= 0, got {value!r}")
    if value > 0 and not service.capabilities.supports("topk_sample_logprobs"):
        raise Unsupported("topk_sample_logprobs", service.backend_name)
    return value


def _refuse_sampling_extras(target_prompt_logprobs: Any, prompt_alt_tokens_k: Any) -> None:
    """SDK-5: the SDK's sampling extras that spec 0.2 does not define are refused, never ignored."""
    if target_prompt_logprobs is not None:
        raise BadRequestError(
            "target_prompt_logprobs", "logprobs of chosen prompt targets are not part of tinker-std spec v0.2"
        )
    if prompt_alt_tokens_k not in (0, None):
        raise BadRequestError("prompt_alt_tokens_k", "alternative prompt tokens are not part of tinker-std spec v0.2")


def _check_last_n(last_n: Any, prompt_len: int, include_prompt_logprobs: bool, topk: int) -> int | None:
    if last_n is None:
        return None
    if isinstance(last_n, bool) or not isinstance(last_n, int) or not 1 <= last_n <= prompt_len - 1:
        raise BadRequestError(
            "prompt_logprobs_last_n", f"must be an int in [1, len(prompt) - 1 = {prompt_len - 1}], got {last_n!r}"
        )
    if not include_prompt_logprobs and topk <= 0:
        raise BadRequestError(
            "prompt_logprobs_last_n", "needs include_prompt_logprobs=True or topk_prompt_logprobs > 0"
        )
    return last_n


def _with_sequence_ids(response: SampleResponse) -> SampleResponse:
    """Give every sequence a fresh id unless the backend named it (SDK-2)."""
    sequences = [
        s if s.sequence_id else s.model_copy(update={"sequence_id": f"seq-{uuid.uuid4().hex}"})
        for s in response.sequences
    ]
    return response.model_copy(update={"sequences": sequences})


def _keep_last(response: SampleResponse, last_n: int) -> SampleResponse:
    """Entries before the last ``last_n`` prompt positions become ``None`` (SDK-4)."""
    update: dict[str, Any] = {}
    if response.prompt_logprobs is not None:
        cut = len(response.prompt_logprobs) - last_n
        update["prompt_logprobs"] = [None] * cut + list(response.prompt_logprobs[cut:])
    if response.topk_prompt_logprobs is not None:
        cut = len(response.topk_prompt_logprobs) - last_n
        update["topk_prompt_logprobs"] = [None] * cut + list(response.topk_prompt_logprobs[cut:])
    return response.model_copy(update=update)
