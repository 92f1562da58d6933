"""The chunks of a token-incremental stream (``stream.IncrementalSampling``), in the shapes of
``replies``' chunks: per token, one chunk with the text it releases and its logprobs; per choice,
a last chunk with the rest of its text and its ``finish_reason``; with
``stream_options.include_usage`` a last chunk with ``usage`` and no choices. Completions with
``echo`` open each choice with its prompt's text; chat streams open each choice with a
``{"role": "assistant", "content": ""}`` delta. An error after the first chunk ends the stream
with OpenAI's ``{"error": {...}}`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tinker_std.errors import TinkerError

from .generate import Scored
from .replies import (
    ChatChunk,
    ChatChunkChoice,
    ChatDelta,
    Usage,
    chat_logprobs,
    legacy_logprobs,
)
from .stream import FinishEvent, IncrementalSampling, TokenEvent

__all__ = ["chat_stream", "completion_stream", "first_event"]

Event = TokenEvent | FinishEvent


def first_event(sampling: IncrementalSampling) -> tuple[Event | None, Iterator[Event]]:
    """The first event and the rest: an error before any token is raised here, so it is answered
    as an HTTP error rather than inside the stream."""
    events = sampling.events()
    return next(events, None), events


def _one(event: TokenEvent) -> Scored:
    return Scored([event.token], [event.text], [event.logprob], None if event.top is None else [event.top])


def completion_stream(
    sampling: IncrementalSampling,
    events: tuple[Event | None, Iterator[Event]],
    head: dict[str, Any],
    *,
    logprobs: bool,
    echo: bool,
    usage: bool,
) -> Iterator[dict[str, Any]]:
    """A ``/completions`` stream (``head``: its ``id``, ``object``, ``created``, ``model``)."""
    tokenizer = sampling.tokenizer
    prefix = [0] * len(sampling.choices)
    if echo:
        for index in range(len(sampling.choices)):
            text = tokenizer.decode(sampling.prompts[index // sampling.n], skip_special_tokens=False)
            prefix[index] = len(text)
            yield _completion_chunk(head, index, text, None, None)
    completion_tokens = 0
    for event in _all(events, head):
        if isinstance(event, dict):
            yield event
            return
        start = prefix[event.choice] + event.offset
        if isinstance(event, TokenEvent):
            lp = legacy_logprobs(tokenizer, _one(event), 0, start).model_dump() if logprobs else None
            yield _completion_chunk(head, event.choice, event.text, lp, None)
        else:
            completion_tokens += len(event.completion.scored.tokens)
            yield _completion_chunk(head, event.choice, event.text, None, event.completion.finish_reason)
    if usage:
        yield {**head, "choices": [], "usage": _usage(sampling, completion_tokens).model_dump()}


def chat_stream(
    sampling: IncrementalSampling,
    events: tuple[Event | None, Iterator[Event]],
    head: dict[str, Any],
    *,
    logprobs: bool,
    usage: bool,
) -> Iterator[dict[str, Any]]:
    """A ``/chat/completions`` stream (``head``: its ``id``, ``created``, ``model``)."""
    tokenizer = sampling.tokenizer

    def chunk(choice: ChatChunkChoice) -> dict[str, Any]:
        return ChatChunk(id=head["id"], created=head["created"], model=head["model"], choices=[choice]).model_dump()

    for index in range(len(sampling.choices)):
        yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")))
    completion_tokens = 0
    for event in _all(events, head):
        if isinstance(event, dict):
            yield event
            return
        if isinstance(event, TokenEvent):
            lp = chat_logprobs(tokenizer, _one(event), 0, 1) if logprobs else None
            yield chunk(ChatChunkChoice(index=event.choice, delta=ChatDelta(content=event.text), logprobs=lp))
        else:
            completion_tokens += len(event.completion.scored.tokens)
            delta = ChatDelta(content=event.text or None)
            yield chunk(ChatChunkChoice(index=event.choice, delta=delta, finish_reason=event.completion.finish_reason))
    if usage:
        end = ChatChunk(id=head["id"], created=head["created"], model=head["model"], choices=[])
        yield end.model_copy(update={"usage": _usage(sampling, completion_tokens)}).model_dump()


def _all(events: tuple[Event | None, Iterator[Event]], head: dict[str, Any]) -> Iterator[Event | dict[str, Any]]:
    """The events; an error raised by a later one becomes OpenAI's error event (the stream ends)."""
    first, rest = events
    if first is None:
        return
    yield first
    try:
        yield from rest
    except Exception as exc:  # headers are sent: the error goes in the stream
        kind = "invalid_request_error" if isinstance(exc, TinkerError) and exc.status_code < 500 else "server_error"
        yield {"error": {"message": f"{type(exc).__name__}: {exc}", "type": kind, "code": type(exc).__name__}}


def _completion_chunk(
    head: dict[str, Any], index: int, text: str, logprobs: Any, finish_reason: str | None
) -> dict[str, Any]:
    return {**head, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def _usage(sampling: IncrementalSampling, completion_tokens: int) -> Usage:
    prompt = sum(len(p) for p in sampling.prompts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens)
