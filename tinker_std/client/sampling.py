"""``SamplingClient``: sample from fixed weights and score prompts (spec SMP)."""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING

from ..backend import SampleRequest, SamplerSpec, Tokenizer
from ..futures import APIFuture
from ..types import ModelInput, SampleResponse, SamplingParams
from .validation import validate_sample

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = ["SamplingClient"]


class SamplingClient:
    """Samples from one set of weights. Sampling requests are independent and may run concurrently.

    When the object is garbage collected, the backend is told it may free the sampler (SMP-19), so
    a loop that takes a fresh snapshot sampler every step does not accumulate adapter copies."""

    def __init__(self, service: ServiceClient, spec: SamplerSpec) -> None:
        self._service = service
        self.spec = spec
        weakref.finalize(self, service._release_sampler, spec.sampler_id)

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
    ) -> APIFuture[SampleResponse]:
        """Sample ``num_samples`` completions of ``prompt``; returns a future at once."""
        service = self._service
        tokens, params = validate_sample(
            prompt,
            num_samples,
            sampling_params,
            topk_prompt_logprobs,
            self.spec,
            service.capabilities,
            service.backend_name,
        )
        room = self.spec.max_context_length - len(tokens)
        service.limits.check_sample(num_samples, room if params.max_tokens is None else params.max_tokens)
        request = SampleRequest(tokens, num_samples, params, bool(include_prompt_logprobs), topk_prompt_logprobs)
        return service._submit(lambda backend: backend.sample(self.spec.sampler_id, request))

    async def sample_async(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> SampleResponse:
        """Like ``sample`` but resolves to the response itself."""
        return await self.sample(prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs)

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[list[float | None]]:
        """``log p(prompt[i] | prompt[:i])`` for every position; entry 0 is ``None`` (SMP-10)."""
        inner = self.sample(prompt, 1, SamplingParams(max_tokens=1), include_prompt_logprobs=True)

        async def extract() -> list[float | None]:
            response = await inner
            values = response.prompt_logprobs or []
            return [None if v is None or math.isnan(v) else v for v in values]

        return self._service._submit(lambda backend: extract())

    async def compute_logprobs_async(self, prompt: ModelInput) -> list[float | None]:
        return await self.compute_logprobs(prompt)

    def get_tokenizer(self) -> Tokenizer:
        return self._service._backend.get_tokenizer(self.spec.base_model)

    def get_base_model(self) -> str:
        return self.spec.base_model
