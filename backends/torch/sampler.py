"""The decode loop of the torch backend: batched, KV-cached, one random stream per sequence.

Semantics come from ``tinker_std.sampling_rules`` (shared with every backend); this module only
runs the model:

1. The prompt is run once (batch 1, ``use_cache=True``); its logits give prompt logprobs and
   top-k prompt logprobs when asked for, and its last row the first token's distribution.
2. The prompt's KV cache is repeated to ``num_samples`` rows, and all live sequences decode
   together: one forward per step over a ``(live, 1)`` batch. Every sequence has the same length
   at every step, so no padding or position bookkeeping is needed. A sequence that stops is
   dropped from the batch (``Cache.batch_select_indices``).
3. Each sequence ``j`` draws with ``choose_token`` from its own ``sequence_generator(seed, j)``, on
   CPU ``float64`` copies of its logits row, so its draws depend neither on the device nor on
   ``num_samples`` or the other sequences.
4. ``logprobs[n]`` is the float32 ``log_softmax`` of the raw logits at the sampled token
   (temperature 1, no filtering): the quantity ``forward`` computes (SMP-3).
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import torch

from tinker_std.backend import SampleRequest, SamplerSpec, Tokenizer
from tinker_std.sampling_rules import StopRule, choose_token, prompt_scores, sequence_generator, token_budget
from tinker_std.types import SampledSequence, SampleResponse, StopReason

__all__ = ["sample"]


def _accepts(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def sample(
    model: Any, request: SampleRequest, spec: SamplerSpec, tokenizer: Tokenizer, device: torch.device
) -> SampleResponse:
    """Answer one sampling request with ``model`` (a Hugging Face causal LM with the right adapter
    already active); call under ``torch.no_grad()``.

    ``BadRequestError`` (field ``prompt``) for an empty prompt or a token id outside the vocabulary;
    ``ContextLengthError`` when ``prompt + max_tokens`` does not fit (SMP-2)."""
    prompt = list(request.prompt)
    params = request.sampling_params
    max_tokens = token_budget(prompt, params, spec.vocab_size, spec.max_context_length)
    stop = StopRule.from_stop(params.stop, tokenizer.eos_token_id)
    want_prompt_scores = request.include_prompt_logprobs or request.topk_prompt_logprobs > 0
    n = request.num_samples

    kwargs: dict[str, Any] = {"use_cache": True}
    if not want_prompt_scores and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=torch.tensor([prompt], device=device), **kwargs)
    prompt_logits = out.logits[0].float()  # (P or 1, V)
    cache = out.past_key_values
    last = prompt_logits[-1:].expand(n, -1)  # (live, V), row r is sequence live[r]
    if n > 1 and max_tokens > 1:
        cache.batch_repeat_interleave(n)

    generators = [sequence_generator(params.seed, j) for j in range(n)]
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    reasons: list[StopReason] = ["length"] * n
    live = list(range(n))
    while live:
        choice_logits = last.to("cpu", torch.float64)
        chosen = [choose_token(choice_logits[r], params, generators[j]) for r, j in enumerate(live)]
        raw = torch.log_softmax(last, dim=-1)
        rows = torch.arange(len(live), device=raw.device)
        chosen_lps = raw[rows, torch.tensor(chosen, device=raw.device)].tolist()
        keep: list[int] = []
        for r, j in enumerate(live):
            tokens[j].append(chosen[r])
            logprobs[j].append(float(chosen_lps[r]))
            if stop.reached(tokens[j], tokenizer):
                reasons[j] = "stop"
            elif len(tokens[j]) < max_tokens:
                keep.append(r)
        if not keep:
            break
        if len(keep) < len(live):
            cache.batch_select_indices(torch.tensor(keep, device=device))
        live = [live[r] for r in keep]
        step_input = torch.tensor([[tokens[j][-1]] for j in live], device=device)
        last = model(input_ids=step_input, past_key_values=cache, use_cache=True).logits[:, -1].float()

    lps, tops = (
        prompt_scores(prompt_logits, prompt, request.include_prompt_logprobs, request.topk_prompt_logprobs)
        if want_prompt_scores
        else (None, None)
    )
    sequences = [
        SampledSequence(stop_reason=reasons[j], tokens=tokens[j], logprobs=logprobs[j], sequence_id=uuid.uuid4().hex)
        for j in range(n)
    ]
    return SampleResponse(sequences=sequences, prompt_logprobs=lps, topk_prompt_logprobs=tops, type="sample")
