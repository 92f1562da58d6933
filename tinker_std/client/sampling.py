"""``SamplingClient``: sample from fixed weights and score prompts (spec SMP)."""

from __future__ import annotations

import math
import uuid
import weakref
from typing import Any

from ..backend import Backend, SampleRequest, SamplerSpec, Tokenizer, TokenSink
from ..errors import BadRequestError, Unsupported
from ..futures import APIFuture
from ..types import ModelInput, SampleResponse, SamplingParams, TensorData
from .sampler_handles import SamplerOrigin, encode_handle, live_sampler, parse_handle, release, retain, session_for
from .session import BackendSession
from .validation import validate_checkpoint_path, validate_sample

__all__ = ["SamplingClient", "create_sampling_client", "decodes_incrementally", "sample_with_sink"]


def create_sampling_client(
    session: BackendSession,
    model_path: str | None = None,
    base_model: str | None = None,
    record_stability_info: bool = False,
) -> APIFuture[SamplingClient]:
    """A sampler of ``session``'s backend over saved weights (``model_path``) or the plain
    ``base_model`` (SMP-15); neither is a ``BadRequestError``, before any request.

    Given both, ``model_path`` is sampled and ``base_model`` must name the checkpoint's base
    model (else ``BadRequestError`` on ``base_model``). ``record_stability_info`` records every
    sample for ``stable_reinforce`` (SDK-3)."""
    if model_path is None and base_model is None:
        raise BadRequestError("model_path", "give model_path or base_model")
    if base_model is not None and (not isinstance(base_model, str) or not base_model):
        raise BadRequestError("base_model", "must be a non-empty model name")
    parsed = validate_checkpoint_path(model_path, "model_path") if model_path is not None else None
    if not isinstance(record_stability_info, bool):
        raise BadRequestError("record_stability_info", f"must be a bool, got {record_stability_info!r}")
    record = record_stability_info

    async def run(backend: Backend) -> SamplingClient:
        if parsed is None:
            spec = await backend.create_sampler(base_model=base_model)
            return SamplingClient(session, spec, record, SamplerOrigin(base_model=base_model))
        spec = await backend.create_sampler(model_path=parsed)
        if base_model is not None and spec.base_model != base_model:
            await backend.release_sampler(spec.sampler_id)
            raise BadRequestError(
                "base_model", f"{parsed.tinker_path} was trained on {spec.base_model!r}, not {base_model!r}"
            )
        return SamplingClient(session, spec, record, SamplerOrigin(model_path=parsed.tinker_path))

    return session.submit(run)


def client_from_handle(handle: str) -> SamplingClient:
    """A client of the sampler behind ``handle`` (``sampler_handles``): the same sampler in the
    process that made it, else a new sampler over the same checkpoint or base model."""
    parsed = parse_handle(handle)
    live = live_sampler(parsed)
    if live is not None:
        session, spec, origin = live
        return SamplingClient(session, spec, parsed.record_stability_info, origin)
    origin = parsed.origin
    return create_sampling_client(
        session_for(parsed), origin.model_path, origin.base_model, parsed.record_stability_info
    ).result()


class SamplingClient:
    """Samples from one set of weights. Sampling requests are independent and may run concurrently.

    Every returned sequence carries a ``sequence_id`` unique to this ``ServiceClient`` (SDK-2).
    With ``record_stability_info`` every sample is recorded for ``stable_reinforce`` (SDK-3).

    When the object is garbage collected, the backend is told it may free the sampler (SMP-19), so
    a loop that takes a fresh snapshot sampler every step does not accumulate adapter copies."""

    def __init__(
        self,
        session: BackendSession,
        spec: SamplerSpec,
        record_stability_info: bool = False,
        origin: SamplerOrigin | None = None,
    ) -> None:
        self.session = session
        self.spec = spec
        self.record_stability_info = bool(record_stability_info)
        self.origin = origin or SamplerOrigin()
        retain(session, spec, self.origin)
        weakref.finalize(self, release, session, spec.sampler_id)

    # -- handles (tinker 0.38): pass a sampler to another process --------------------------------

    def get_sampler_handle(self) -> str:
        """A string naming this sampler, for ``from_sampler_handle`` here or in another process
        (``tinker_std.client.sampler_handles``); it carries no weights and no credentials."""
        return encode_handle(self.session, self.spec, self.origin, self.record_stability_info)

    @staticmethod
    def from_sampler_handle(handle: str, *, api_key: str | None = None) -> SamplingClient:
        """A client of the sampler behind ``handle``. ``api_key`` is for hosted services: an
        in-process backend takes none, so a key is a ``BadRequestError`` naming it."""
        if api_key is not None:
            raise BadRequestError("api_key", "an in-process backend takes no API key")
        return client_from_handle(handle)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle as its handle: another process gets a client of the same weights."""
        return (client_from_handle, (self.get_sampler_handle(),))

    def _serving(self) -> SamplingClient:
        """The client whose backend sampler runs a request submitted now: this one; an inflight
        client (``client/inflight.py``) answers its training client's newest weights."""
        return self

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
        (capability ``topk_sample_logprobs``, SDK-6); ``target_prompt_logprobs`` returns the
        logprobs of chosen ids at each prompt position (capability ``target_prompt_logprobs``,
        SDK-7); ``prompt_alt_tokens_k = k`` returns ``k`` draws at every prompt position after
        the first (capability ``prompt_alt_tokens``, SDK-8)."""
        return self._submit(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs=include_prompt_logprobs,
            topk_prompt_logprobs=topk_prompt_logprobs,
            topk_sample_logprobs=topk_sample_logprobs,
            target_prompt_logprobs=target_prompt_logprobs,
            prompt_alt_tokens_k=prompt_alt_tokens_k,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )

    def _submit(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
        on_tokens: TokenSink | None = None,
    ) -> APIFuture[SampleResponse]:
        session = self.session
        serving = self._serving()  # the sampler this request runs on, fixed now (INF-2)
        spec = serving.spec
        alt_k = _check_alt_k(prompt_alt_tokens_k, session)
        topk_sample = _check_topk_sample(topk_sample_logprobs, session)
        tokens, params = validate_sample(
            prompt,
            num_samples,
            sampling_params,
            topk_prompt_logprobs,
            spec,
            session.capabilities,
            session.backend_name,
        )
        room = spec.max_context_length - len(tokens)
        session.limits.check_sample(num_samples, room if params.max_tokens is None else params.max_tokens)
        last_n = _check_last_n(prompt_logprobs_last_n, len(tokens), include_prompt_logprobs, topk_prompt_logprobs)
        targets = check_target_ids(target_prompt_logprobs, len(tokens), spec.vocab_size, session)
        request = SampleRequest(
            tokens,
            num_samples,
            params,
            bool(include_prompt_logprobs),
            topk_prompt_logprobs,
            topk_sample,
            target_prompt_ids=targets,
            prompt_alt_tokens_k=alt_k,
            on_tokens=on_tokens,
        )
        records = session.stability_records if self.record_stability_info else None

        async def run(backend: Backend) -> SampleResponse:
            response = await backend.sample(serving.spec.sampler_id, request)  # holds ``serving`` (SMP-19)
            response = _with_sequence_ids(response)
            if last_n is not None:
                response = _keep_last(response, last_n)
            if records is not None:
                records.record(tokens, response.sequences)
            return response

        return session.submit(run)

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

        return self.session.submit(lambda backend: extract())

    async def compute_logprobs_async(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    def get_tokenizer(self) -> Tokenizer:
        return self.session.backend.get_tokenizer(self.spec.base_model)

    def get_base_model(self) -> str:
        return self.spec.base_model


def _check_topk_sample(value: Any, session: BackendSession) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError("topk_sample_logprobs", f"must be an int >= 0, got {value!r}")
    if value > 0 and not session.capabilities.supports("topk_sample_logprobs"):
        raise Unsupported("topk_sample_logprobs", session.backend_name)
    return value


def decodes_incrementally(client: SamplingClient) -> bool:
    """Whether ``client``'s backend reports tokens as it decodes them (``Backend.incremental_decode``)."""
    return type(client.session.backend).incremental_decode


def sample_with_sink(
    client: SamplingClient,
    prompt: ModelInput,
    num_samples: int,
    sampling_params: SamplingParams,
    on_tokens: TokenSink,
    *,
    include_prompt_logprobs: bool = False,
    topk_prompt_logprobs: int = 0,
    topk_sample_logprobs: int = 0,
) -> APIFuture[SampleResponse]:
    """``client.sample`` whose backend also reports each token to ``on_tokens`` as it decodes it
    (the seam of the server's token-incremental OpenAI streams). ``Unsupported``
    (``incremental_decode``) when the backend does not decode incrementally (``decodes_incrementally``):
    a caller that can do without checks that first and waits for the response instead."""
    if not decodes_incrementally(client):
        raise Unsupported("incremental_decode", client.session.backend_name)
    return client._submit(
        prompt,
        num_samples,
        sampling_params,
        include_prompt_logprobs=include_prompt_logprobs,
        topk_prompt_logprobs=topk_prompt_logprobs,
        topk_sample_logprobs=topk_sample_logprobs,
        on_tokens=on_tokens,
    )


def check_target_ids(
    value: Any, prompt_len: int, vocab_size: int, session: BackendSession
) -> tuple[tuple[int, ...], ...] | None:
    """SDK-7: ``target_prompt_logprobs`` as rows of ids, one per prompt position after the first;
    a dense int64 ``[len(prompt) - 1, K]`` tensor of ids in ``[-1, vocab_size)``, else a
    ``BadRequestError`` naming it; ``Unsupported`` without the capability. Given in the SDK's CSR
    form, its unlisted cells are -1 (they request nothing), as the SDK's ``pad_value`` reads them."""
    if value is None:
        return None
    if not isinstance(value, TensorData):
        raise BadRequestError("target_prompt_logprobs", f"must be TensorData, got {type(value).__name__}")
    if not session.capabilities.supports("target_prompt_logprobs"):
        raise Unsupported("target_prompt_logprobs", session.backend_name)
    shape = value.shape if value.shape is not None else [len(value.data)]
    if value.dtype != "int64" or len(shape) != 2 or shape[0] != prompt_len - 1:
        raise BadRequestError(
            "target_prompt_logprobs",
            f"must be an int64 tensor of shape [len(prompt) - 1 = {prompt_len - 1}, K], got {value.dtype} {shape}",
        )
    ids = [int(v) for v in value.to_numpy(pad_value=-1).reshape(-1)]  # CSR: unlisted cells request nothing
    bad = [v for v in ids if not -1 <= v < vocab_size]
    if bad:
        raise BadRequestError("target_prompt_logprobs", f"ids must be -1 or in [0, {vocab_size}), got {bad[0]}")
    width = shape[1]
    return tuple(tuple(ids[r * width : (r + 1) * width]) for r in range(shape[0]))


def _check_alt_k(value: Any, session: BackendSession) -> int:
    """SDK-8: ``prompt_alt_tokens_k``, an int >= 0 (``None`` is 0); ``Unsupported`` without the capability."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError("prompt_alt_tokens_k", f"must be an int >= 0, got {value!r}")
    if value > 0 and not session.capabilities.supports("prompt_alt_tokens"):
        raise Unsupported("prompt_alt_tokens", session.backend_name)
    return value


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
