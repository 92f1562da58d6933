"""The OpenAI-compatible request and response types (pydantic), and the refusal of every field
tinker-std does not implement.

Requests are ``extra="forbid"``: a field the type does not declare is refused with a 400 naming it.
Fields of the OpenAI API that tinker-std declares but does not implement (``REFUSED_*``) are
accepted only at their no-op default (e.g. ``frequency_penalty: 0``, ``tools: []``); any other value
is refused naming the field. Nothing is silently ignored (CAP-4).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tinker_std.errors import BadRequestError

__all__ = [
    "MAX_TOP_LOGPROBS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "StreamOptions",
]

#: The most alternatives ``logprobs`` (completions) / ``top_logprobs`` (chat) may ask for (OpenAI's 20).
MAX_TOP_LOGPROBS = 20

#: Declared but refused unless at their default (the value that means "off" in OpenAI's API).
_NOOP_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "user": (None,),
    "suffix": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "service_tier": (None,),
    "store": (None, False),
    "metadata": (None,),
    "modalities": (None, ["text"]),
    "reasoning_effort": (None,),
}


class StreamOptions(BaseModel):
    """``include_usage``: a last chunk, before ``[DONE]``, carries ``usage`` and no choices."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_non_defaults(self) -> _Request:
        for name in self.model_fields_set:
            allowed = _NOOP_DEFAULTS.get(name)
            if allowed is not None and getattr(self, name) not in allowed:
                raise BadRequestError(name, f"{name}={getattr(self, name)!r} is not supported by tinker-std serve")
        for text in [self.stop] if isinstance(self.stop, str) else self.stop or []:
            if not text:
                raise BadRequestError("stop", "a stop sequence must not be empty")
        if self.stream_options is not None and not self.stream:
            raise BadRequestError("stream_options", "only allowed with stream=true")
        return self

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Request):
    """``POST /completions``. ``prompt``: a string, a list of strings, a list of token ids, or a
    list of token-id lists; each prompt gets ``n`` choices (index ``prompt * n + j``).
    ``logprobs = k``: each generated token's logprob and its ``k`` most likely alternatives
    (``0``: the token's logprob only). ``echo``: the prompt is prepended to the text (and, with
    ``logprobs``, its tokens' logprobs to the logprobs; the first is ``null``). ``max_tokens``
    defaults to 16, as OpenAI's."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequestError("best_of", "best_of other than n is not supported by tinker-std serve")
        return self


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``content`` is text or a list of text parts (other part types are refused)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def template_dict(self) -> dict[str, str]:
        """The message as chat templates expect it: ``{"role", "content"[, "name"]}``."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        out = {"role": self.role, "content": text}
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatCompletionRequest(_Request):
    """``POST /chat/completions``: ``messages`` rendered by the tokenizer's own chat template
    (``apply_chat_template`` with ``add_generation_prompt=True``). ``logprobs: true`` returns each
    generated token's logprob, with its ``top_logprobs`` most likely alternatives.
    ``max_completion_tokens`` is another name for ``max_tokens`` (give at most one); unset, a
    reply may run to the end of the model's context."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    reasoning_effort: str | None = None

    @model_validator(mode="after")
    def _chat_fields(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs", "requires logprobs=true")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None:
                raise BadRequestError("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
            self.max_tokens = self.max_completion_tokens
        return self
