"""One OpenAI request's generation: sample through the server's ``SamplingClient`` and cut each
completion the way OpenAI's API defines it.

- Sampling is the library's ``SamplingClient.sample`` (the same path as the Tinker SDK's
  ``asample``): ``max_tokens``, ``temperature``, ``top_p``, ``seed`` are ``SamplingParams``; ``n`` is
  ``num_samples``; logprobs are the sampler's own raw (temperature-1) logprobs of the sampled
  tokens (SMP-3), alternatives from ``topk_sample_logprobs`` (SDK-6), echoed prompt logprobs from
  ``include_prompt_logprobs``/``topk_prompt_logprobs`` (SMP-10, SMP-13).
- ``stop``: OpenAI stops at the end-of-sequence token *and* at each stop string, and the text
  excludes the stop string. tinker-std's explicit stop strings replace EOS (SMP-4), so a
  completion is cut here at its first EOS token, then its text at the first stop string.
- The EOS token that ended a completion is in its logprobs (and ``usage``), not in its text; the
  tokens that spelled a stop string are in the logprobs, but the string is not in the text. (An
  echo-scoring harness such as lm-eval drops the last logprob as the generated one: it must be
  there even when the model chose EOS.)
- ``finish_reason`` is ``"stop"`` when EOS or a stop string ended the completion, else
  ``"length"``.
- ``Completion.deltas``: per kept token, the text it adds; joined, they are exactly ``text`` (a
  token that ends inside a multi-byte character adds ``""`` and the next one adds the character).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from tinker_std.backend import Tokenizer
from tinker_std.client.sampling import SamplingClient
from tinker_std.types import ModelInput, SampleResponse, SamplingParams

__all__ = ["Completion", "Generation", "Scored", "cut_completion", "generate", "token_deltas"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Scored:
    """Tokens with their logprobs (``None`` for the first prompt token) and top alternatives."""

    tokens: list[int]
    deltas: list[str]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]] | None


@dataclass(frozen=True)
class Completion:
    """One choice: its text and the generated tokens behind it."""

    text: str
    scored: Scored
    finish_reason: FinishReason


@dataclass(frozen=True)
class Generation:
    """The completions of one prompt (``n`` of them) and the prompt itself (echo)."""

    prompt_tokens: list[int]
    prompt: Scored | None
    completions: list[Completion]


def generate(
    client: SamplingClient,
    prompts: list[list[int]],
    *,
    n: int,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: list[str],
    top_logprobs: int,
    echo_logprobs: bool,
    track: Callable[[Future[SampleResponse]], None] = lambda future: None,
) -> list[Generation]:
    """Sample ``n`` completions of every prompt (all requests in flight at once; blocking). Each
    sampling request's future is passed to ``track`` (the server counts it against the tenant's
    quota and in its metrics)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop or None)
    futures: list[Future[SampleResponse]] = [
        client.sample(
            ModelInput.from_ints(tokens),
            n,
            params,
            include_prompt_logprobs=echo_logprobs,
            topk_prompt_logprobs=top_logprobs if echo_logprobs else 0,
            topk_sample_logprobs=top_logprobs,
        ).future()
        for tokens in prompts
    ]
    for future in futures:
        track(future)
    tokenizer = client.get_tokenizer()
    out = []
    for tokens, future in zip(prompts, futures, strict=True):
        response = future.result()
        prompt = _echoed(tokenizer, tokens, response) if echo_logprobs else None
        completions = [cut_completion(tokenizer, seq, stop, top_logprobs > 0) for seq in response.sequences]
        out.append(Generation(tokens, prompt, completions))
    return out


def _echoed(tokenizer: Tokenizer, tokens: list[int], response: SampleResponse) -> Scored:
    logprobs = list(response.prompt_logprobs or [None] * len(tokens))
    logprobs[0] = None
    top = response.topk_prompt_logprobs
    text = tokenizer.decode(tokens, skip_special_tokens=False)
    return Scored(
        tokens,
        token_deltas(tokenizer, tokens, text, skip_special=False),
        logprobs,
        None if top is None else [list(row or []) for row in top],
    )


def cut_completion(tokenizer: Tokenizer, seq: Any, stop: list[str], with_top: bool) -> Completion:
    """One sampled sequence as an OpenAI completion: cut at its first EOS, its text at the first stop string."""
    tokens = list(seq.tokens)
    logprobs: list[float | None] = list(seq.logprobs or [])
    top = [list(row or []) for row in seq.topk_logprobs] if with_top and seq.topk_logprobs else None
    finish: FinishReason = "stop" if seq.stop_reason == "stop" else "length"
    eos = tokenizer.eos_token_id
    if eos is not None and eos in tokens:
        keep = tokens.index(eos) + 1
        tokens, logprobs, finish = tokens[:keep], logprobs[:keep], "stop"
        top = None if top is None else top[:keep]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    deltas = token_deltas(tokenizer, tokens, text, skip_special=True)
    return Completion(text, Scored(tokens, deltas, logprobs, top), finish)


def token_deltas(tokenizer: Tokenizer, tokens: list[int], text: str, *, skip_special: bool) -> list[str]:
    """The text each token adds to ``text`` (the decoding of ``tokens``, perhaps cut short): the
    pieces join to exactly ``text``."""
    deltas, emitted = [], 0
    for i in range(len(tokens)):
        prefix = tokenizer.decode(tokens[: i + 1], skip_special_tokens=skip_special)
        if i < len(tokens) - 1 and prefix.endswith("\ufffd"):
            deltas.append("")  # the token ends inside a character: the next one completes it
            continue
        end = min(len(prefix), len(text))
        deltas.append(text[emitted:end] if end > emitted else "")
        emitted = max(emitted, end)
    if deltas:
        deltas[-1] += text[emitted:]
    return deltas
