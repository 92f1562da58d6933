"""``SamplingClient``: sample from fixed weights and score prompts (spec SMP)."""

from __future__ import annotations

import math
import weakref

from ..backend import Backend, SampleRequest, SamplerSpec, Tokenizer
from ..errors import BadRequestError
from ..futures import APIFuture
from ..types import ModelInput, SampleResponse, SamplingParams
from .session import BackendSession
from .validation import validate_checkpoint_path, validate_sample

__all__ = ["SamplingClient", "create_sampling_client"]


def create_sampling_client(
    session: BackendSession, model_path: str | None = None, base_model: str | None = None
) -> APIFuture[SamplingClient]:
    """A sampler of ``session``'s backend over saved weights (``model_path``) or the plain
    ``base_model``: exactly one of the two (``BadRequestError`` otherwise, before any request)."""
    if (model_path is None) == (base_model is None):
        raise BadRequestError("model_path", "give exactly one of model_path and base_model")
    parsed = validate_checkpoint_path(model_path, "model_path") if model_path is not None else None

    async def run(backend: Backend) -> SamplingClient:
        if parsed is not None:
            return SamplingClient(session, await backend.create_sampler(model_path=parsed))
        return SamplingClient(session, await backend.create_sampler(base_model=base_model))

    return session.submit(run)


class SamplingClient:
    """Samples from one set of weights. Sampling requests are independent and may run concurrently.

    When the object is garbage collected, the backend is told it may free the sampler (SMP-19), so
    a loop that takes a fresh snapshot sampler every step does not accumulate adapter copies."""

    def __init__(self, session: BackendSession, spec: SamplerSpec) -> None:
        self.session = session
        self.spec = spec
        weakref.finalize(self, session.release_sampler, spec.sampler_id)

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
        session = self.session
        tokens, params = validate_sample(
            prompt,
            num_samples,
            sampling_params,
            topk_prompt_logprobs,
            self.spec,
            session.capabilities,
            session.backend_name,
        )
        request = SampleRequest(tokens, num_samples, params, bool(include_prompt_logprobs), topk_prompt_logprobs)
        return session.submit(lambda backend: backend.sample(self.spec.sampler_id, request))

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

        return self.session.submit(lambda backend: extract())

    async def compute_logprobs_async(self, prompt: ModelInput) -> list[float | None]:
        return await self.compute_logprobs(prompt)

    def get_tokenizer(self) -> Tokenizer:
        return self.session.backend.get_tokenizer(self.spec.base_model)

    def get_base_model(self) -> str:
        return self.spec.base_model
