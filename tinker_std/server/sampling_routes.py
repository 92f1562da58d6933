"""Sampling endpoints: create a sampling session (from a checkpoint or a base model), describe it,
and ``asample`` over the library's ``SamplingClient``.

``asample`` answers ``{"request_id", "sample_sequence_ids"}`` at once; a request that fails to
validate or to run fails its own future (read with ``retrieve_future``), like a training request.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from pydantic import ValidationError

from tinker_std.client.service import ServiceClient
from tinker_std.errors import BadRequestError, LimitExceededError
from tinker_std.types import ModelInput, SamplingParams

from .checkpoint_files import CheckpointFiles
from .futures import FutureStore, chain, new_request_id, settle_exception, settle_result
from .messages import Endpoint, WireReply, WireRequest, field_error, require_int
from .sdk_fields import record_sample, sample_options
from .state import ServerState

__all__ = ["SamplingRoutes"]


class SamplingRoutes:
    """The sampling endpoints over ``service``'s sampling clients."""

    def __init__(
        self, service: ServiceClient, state: ServerState, futures: FutureStore, checkpoints: CheckpointFiles
    ) -> None:
        self.service = service
        self.state = state
        self.futures = futures
        self.checkpoints = checkpoints

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("create_sampling_session", self.create_sampling_session),
            Endpoint("samplers/{sampler_id}", self.get_sampler),
            Endpoint("asample", self.asample),
        ]

    def create_sampling_session(self, request: WireRequest) -> WireReply:
        body = request.json()
        session_id = body.get("session_id")
        self.state.session(request.tenant, session_id)
        model_path, base_model = body.get("model_path"), body.get("base_model")
        backend_path = (
            None if model_path is None else self.checkpoints.resolve(request.tenant, model_path, "model_path")
        )
        client = self.service.create_sampling_client(model_path=backend_path, base_model=base_model).result()
        sampler_id = self.state.register_sampler(request.tenant, str(session_id), client, model_path)
        return WireReply.json({"type": "create_sampling_session", "sampling_session_id": sampler_id})

    def get_sampler(self, request: WireRequest) -> WireReply:
        sampler_id = request.params["sampler_id"]
        sampler = self.state.sampler(request.tenant, sampler_id)
        return WireReply.json(
            {"sampler_id": sampler_id, "base_model": sampler.base_model, "model_path": sampler.model_path}
        )

    def asample(self, request: WireRequest) -> WireReply:
        body = request.json()
        sampler = self.state.sampler(request.tenant, body.get("sampling_session_id"))
        num_samples = body.get("num_samples", 1)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise BadRequestError("num_samples", f"must be a positive integer, got {num_samples!r}")
        limit = self.service.limits.max_num_samples  # the served ServiceClient's bound, as in process (LIM-3)
        if num_samples > limit:
            raise LimitExceededError("num_samples", f"{num_samples} samples in one request exceed the limit of {limit}")
        self.futures.check_capacity(request.tenant)  # 429 before any work (LIM-6)
        answer: Future[Any] = Future()
        request_id = new_request_id()
        ids = [f"{request_id}-{j}" for j in range(num_samples)]
        try:
            options = sample_options(body)
            chunks = (body.get("prompt") or {}).get("chunks")
            if not isinstance(chunks, list):
                raise BadRequestError("prompt.chunks", "must be a list of chunks")
            tokens = [t for j, chunk in enumerate(chunks) for t in _chunk_tokens(chunk, j)]
            raw_params = body.get("sampling_params") or {}
            if not isinstance(raw_params, dict):
                raise BadRequestError("sampling_params", "must be an object")
            try:
                params = SamplingParams.model_validate(raw_params)  # an unknown key is refused by name
                prompt = ModelInput.from_ints(tokens)
            except ValidationError as exc:
                raise field_error(exc, "sampling_params") from None
            future = sampler.client.sample(
                prompt,
                num_samples,
                params,
                include_prompt_logprobs=bool(body.get("prompt_logprobs") or False),
                topk_prompt_logprobs=require_int(body.get("topk_prompt_logprobs") or 0, "topk_prompt_logprobs"),
                topk_sample_logprobs=require_int(options.topk_sample_logprobs, "topk_sample_logprobs"),
                prompt_logprobs_last_n=options.prompt_logprobs_last_n,
                target_prompt_logprobs=options.target_prompt_logprobs,
                prompt_alt_tokens_k=options.prompt_alt_tokens_k,
            )
            if options.record:
                future.future().add_done_callback(
                    lambda done: self._settle_recorded(done, answer, request.tenant, ids, tokens)
                )
            else:
                chain(future.future(), answer)
        except Exception as exc:  # a rejected sample fails its own future, like a training request
            settle_exception(answer, exc)
        self.futures.store(answer, "sample", request.tenant, request_id)
        return WireReply.json({"request_id": request_id, "sample_sequence_ids": ids})

    def _settle_recorded(
        self, done: Future[Any], answer: Future[Any], tenant: str, ids: list[str], tokens: list[int]
    ) -> None:
        """Record a ``record_stability_info`` sample under the ids the SDK got, then answer (SDK-3)."""
        error = done.exception()
        if error is None:
            try:
                record_sample(self.service.stability_records, tenant, ids, tokens, done.result())
            except Exception as exc:
                error = exc
        if error is not None:
            settle_exception(answer, error)
        else:
            settle_result(answer, done.result())


def _chunk_tokens(chunk: Any, index: int) -> list[int]:
    where = f"prompt.chunks[{index}]"
    if not isinstance(chunk, dict):
        raise BadRequestError(where, "must be an object")
    if chunk.get("type", "encoded_text") != "encoded_text":
        raise BadRequestError(where, f"{chunk.get('type')} chunks are not supported (text tokens only)")
    tokens = chunk.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequestError(f"{where}.tokens", "must be a list of integer token ids")
    return tokens
