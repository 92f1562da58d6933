"""The OpenAI-compatible response bodies (pydantic), whole and as stream chunks, built from a
``generate.Generation``.

A token is named by its text, or ``token_id:<id>`` when it is only part of a UTF-8 character.
Completions (``object: text_completion``): ``logprobs`` is OpenAI's legacy shape, ``tokens``,
``token_logprobs``, ``top_logprobs`` (one ``{token: logprob}`` per token, or ``null`` with
``logprobs: 0``) and ``text_offset`` (each token's offset in ``text``). Chat
(``object: chat.completion``): ``logprobs.content`` lists ``{token, logprob, bytes, top_logprobs}``.

A stream sends, per choice, one chunk per token (its text delta and logprobs; the deltas join to
the whole reply's text), then one chunk with its ``finish_reason``; with
``stream_options.include_usage`` a last chunk has ``usage`` and no choices. Chat streams open each
choice with a ``{"role": "assistant", "content": ""}`` delta. The chunks here are those of the
finished reply (a backend without incremental decode); ``stream.py`` sends tokens as they are
decoded, in chunks of the same shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from tinker_std.backend import Tokenizer

from .generate import Generation, Scored

__all__ = [
    "ChatChunk",
    "ChatChunkChoice",
    "ChatDelta",
    "Usage",
    "chat_chunks",
    "chat_logprobs",
    "chat_reply",
    "completion_chunks",
    "completion_reply",
    "legacy_logprobs",
    "token_piece",
    "usage_of",
]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class CompletionReply(BaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: str


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatReply(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunk(BaseModel):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


def usage_of(generations: list[Generation]) -> Usage:
    prompt = sum(len(g.prompt_tokens) for g in generations)
    completion = sum(len(c.scored.tokens) for g in generations for c in g.completions)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def token_piece(tokenizer: Tokenizer, token: int) -> str:
    """A token's text; ``token_id:<id>`` (vLLM's convention) for a token that is only part of a
    UTF-8 character, whose text alone would be ``\ufffd`` for several tokens alike."""
    text = tokenizer.decode([token], skip_special_tokens=False)
    return f"token_id:{token}" if "\ufffd" in text else text


def legacy_logprobs(
    tokenizer: Tokenizer, scored: Scored, start: int, offset: int, stop: int | None = None
) -> CompletionLogprobs:
    """Legacy logprobs of ``scored``'s tokens ``start:stop``; offsets count from ``offset``."""
    end = len(scored.tokens) if stop is None else stop
    offsets, at = [], offset + sum(len(d) for d in scored.deltas[:start])
    for delta in scored.deltas[start:end]:
        offsets.append(at)
        at += len(delta)
    tops = None
    if scored.top is not None:
        tops = [{token_piece(tokenizer, t): lp for t, lp in row} or None for row in scored.top[start:end]]
    return CompletionLogprobs(
        tokens=[token_piece(tokenizer, t) for t in scored.tokens[start:end]],
        token_logprobs=list(scored.logprobs[start:end]),
        top_logprobs=tops,
        text_offset=offsets,
    )


def _joined(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    tops = None if a.top_logprobs is None or b.top_logprobs is None else a.top_logprobs + b.top_logprobs
    return CompletionLogprobs(
        tokens=a.tokens + b.tokens,
        token_logprobs=a.token_logprobs + b.token_logprobs,
        top_logprobs=tops,
        text_offset=a.text_offset + b.text_offset,
    )


def completion_reply(
    tokenizer: Tokenizer,
    generations: list[Generation],
    *,
    rid: str,
    created: int,
    model: str,
    logprobs: bool,
    echo: bool,
) -> CompletionReply:
    choices: list[CompletionChoice] = []
    for g in generations:
        prefix = "".join(g.prompt.deltas) if echo and g.prompt is not None else ""
        if echo and g.prompt is None:
            prefix = tokenizer.decode(g.prompt_tokens, skip_special_tokens=False)
        for c in g.completions:
            lp = None
            if logprobs:
                lp = legacy_logprobs(tokenizer, c.scored, 0, len(prefix))
                if echo and g.prompt is not None:
                    lp = _joined(legacy_logprobs(tokenizer, g.prompt, 0, 0), lp)
            choices.append(
                CompletionChoice(index=len(choices), text=prefix + c.text, logprobs=lp, finish_reason=c.finish_reason)
            )
    return CompletionReply(id=rid, created=created, model=model, choices=choices, usage=usage_of(generations))


def completion_chunks(
    reply: CompletionReply,
    tokenizer: Tokenizer,
    generations: list[Generation],
    *,
    logprobs: bool,
    echo: bool,
    usage: bool,
) -> Iterator[dict[str, Any]]:
    """The stream of ``reply`` (built from the same ``generations``)."""
    head = {"id": reply.id, "object": "text_completion", "created": reply.created, "model": reply.model}
    index = 0
    for g in generations:
        for c in g.completions:
            prefix_len = 0
            if echo:
                prefix = reply.choices[index].text[: len(reply.choices[index].text) - len(c.text)]
                prefix_len = len(prefix)
                lp = legacy_logprobs(tokenizer, g.prompt, 0, 0) if logprobs and g.prompt is not None else None
                yield {
                    **head,
                    "choices": [{"index": index, "text": prefix, "logprobs": _dump(lp), "finish_reason": None}],
                }
            for i, delta in enumerate(c.scored.deltas):
                lp = legacy_logprobs(tokenizer, c.scored, i, prefix_len, i + 1) if logprobs else None
                yield {
                    **head,
                    "choices": [{"index": index, "text": delta, "logprobs": _dump(lp), "finish_reason": None}],
                }
            yield {
                **head,
                "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": c.finish_reason}],
            }
            index += 1
    if usage:
        yield {**head, "choices": [], "usage": _dump(reply.usage)}


def chat_logprobs(tokenizer: Tokenizer, scored: Scored, start: int, stop: int) -> ChatLogprobs:
    content = []
    for j in range(start, stop):
        piece = token_piece(tokenizer, scored.tokens[j])
        tops = [
            TopLogprob(token=(p := token_piece(tokenizer, t)), logprob=lp, bytes=list(p.encode()))
            for t, lp in (scored.top[j] if scored.top is not None else [])
        ]
        value = scored.logprobs[j]
        assert value is not None  # a sampled token always has its logprob
        content.append(TokenLogprob(token=piece, logprob=value, bytes=list(piece.encode()), top_logprobs=tops))
    return ChatLogprobs(content=content)


def chat_reply(
    tokenizer: Tokenizer, generations: list[Generation], *, rid: str, created: int, model: str, logprobs: bool
) -> ChatReply:
    (g,) = generations
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content=c.text),
            logprobs=chat_logprobs(tokenizer, c.scored, 0, len(c.scored.tokens)) if logprobs else None,
            finish_reason=c.finish_reason,
        )
        for i, c in enumerate(g.completions)
    ]
    return ChatReply(id=rid, created=created, model=model, choices=choices, usage=usage_of(generations))


def chat_chunks(
    reply: ChatReply, tokenizer: Tokenizer, generations: list[Generation], *, logprobs: bool, usage: bool
) -> Iterator[dict[str, Any]]:
    """The stream of ``reply`` (built from the same ``generations``)."""

    def chunk(choice: ChatChunkChoice) -> dict[str, Any]:
        return ChatChunk(id=reply.id, created=reply.created, model=reply.model, choices=[choice]).model_dump()

    for index, c in enumerate(generations[0].completions):
        yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")))
        for i, delta in enumerate(c.scored.deltas):
            lp = chat_logprobs(tokenizer, c.scored, i, i + 1) if logprobs else None
            yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta), logprobs=lp))
        yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=c.finish_reason))
    if usage:
        yield ChatChunk(
            id=reply.id, created=reply.created, model=reply.model, choices=[], usage=reply.usage
        ).model_dump()


def _dump(model: BaseModel | None) -> Any:
    return None if model is None else model.model_dump()
