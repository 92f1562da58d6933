"""The decode loop of the mock backend.

The sampling semantics (per-sequence generators from ``(seed, j)``, greedy/temperature/top-k/top-p
token choice with its tie rules, stops, prompt and top-k prompt logprobs, the ``max_tokens``
budget) are shared by every backend and live in ``tinker_std.sampling_rules``; this module
re-exports them for compatibility and adds the mock's loop:

* The prompt is run once; each sequence then decodes one token at a time on its own copy of the
  prompt's key/value cache, sequences one after another, so a sequence's output depends neither on
  ``num_samples`` nor on the other sequences.
* ``logprobs[i]`` is the raw model ``log_softmax`` (temperature 1, no filtering) of the sampled
  token given ``prompt + tokens[:i]``: the number ``forward`` returns for that token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import torch

from tinker_std.backend import SampleRequest, SamplerSpec, Tokenizer
from tinker_std.sampling_rules import (
    SEED_STRIDE,
    StopRule,
    alt_draws,
    choose_token,
    prompt_scores,
    sequence_generator,
    target_tensor,
    token_budget,
    top_logprobs,
)
from tinker_std.types import SampledSequence, SampleResponse, SamplingParams, StopReason

from .model import KVCache

__all__ = [
    "SEED_STRIDE",
    "StopRule",
    "choose_token",
    "generate",
    "prompt_scores",
    "sample",
    "sequence_generator",
]

#: ``model(tokens, cache)``: logits (T, V) of ``tokens`` continuing the sequence held by ``cache``
#: (which it extends); see ``model.forward``.
ModelFn = Callable[[list[int], KVCache], torch.Tensor]


def generate(
    model: ModelFn,
    logits: torch.Tensor,
    cache: KVCache,
    params: SamplingParams,
    max_tokens: int,
    stop: StopRule,
    tokenizer: Tokenizer,
    generator: torch.Generator,
    topk: int = 0,
) -> SampledSequence:
    """One completion, given the prompt's last-position ``logits`` and its ``cache`` (extended here);
    with ``topk > 0`` also the top-k raw logprobs of every sampled position (SDK-6)."""
    tokens: list[int] = []
    logprobs: list[float] = []
    tops: list[list[tuple[int, float]] | None] = []
    reason: StopReason = "length"
    while len(tokens) < max_tokens:
        token = choose_token(logits, params, generator)
        tokens.append(token)
        raw = torch.log_softmax(logits, dim=-1)
        logprobs.append(float(raw[token]))
        if topk > 0:
            tops.append(top_logprobs(raw.unsqueeze(0), topk)[0])
        if stop.reached(tokens, tokenizer):
            reason = "stop"
            break
        if len(tokens) < max_tokens:
            logits = model([token], cache)[-1]
    return SampledSequence(
        stop_reason=reason,
        tokens=tokens,
        logprobs=logprobs,
        sequence_id=uuid.uuid4().hex,
        topk_logprobs=tops if topk > 0 else None,
    )


def sample(model: ModelFn, request: SampleRequest, spec: SamplerSpec, tokenizer: Tokenizer) -> SampleResponse:
    """Answer one sampling request with ``model``, the sampler ``spec`` giving its sizes.

    ``BadRequestError`` (field ``prompt``) for an empty prompt or a token id outside the vocabulary;
    ``ContextLengthError`` when ``prompt + max_tokens`` does not fit (SMP-2)."""
    prompt = list(request.prompt)
    params = request.sampling_params
    max_tokens = token_budget(prompt, params, spec.vocab_size, spec.max_context_length)
    stop = StopRule.from_stop(params.stop, tokenizer.eos_token_id)
    prompt_cache = KVCache()
    prompt_logits = model(prompt, prompt_cache)  # shared by every sequence: caches are copy-on-extend
    sequences = [
        generate(
            model,
            prompt_logits[-1],
            prompt_cache.copy(),
            params,
            max_tokens,
            stop,
            tokenizer,
            sequence_generator(params.seed, j),
            request.topk_sample_logprobs,
        )
        for j in range(request.num_samples)
    ]
    lps, tops = prompt_scores(prompt_logits, prompt, request.include_prompt_logprobs, request.topk_prompt_logprobs)
    targets = target_tensor(prompt_logits, request.target_prompt_ids)
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=lps,
        topk_prompt_logprobs=tops,
        target_prompt_logprobs=targets,
        prompt_alt_tokens=alt_draws(prompt_logits, request.prompt_alt_tokens_k, params),
        type="sample",
    )
