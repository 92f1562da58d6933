"""Chat messages -> tokens + per-token weights, and tokens + weights -> a ``Datum``.

A *renderer* turns a conversation into the token sequence a model trains or samples on, with a
weight per token: 0 for prompt tokens (system, user, the ``assistant:`` header), 1 for the
assistant's reply tokens. Two renderers:

* ``ChatTemplateRenderer`` uses the tokenizer's own ``apply_chat_template`` (Hugging Face
  tokenizers that ship a chat template). Reply tokens are found by rendering growing prefixes of
  the conversation, so they include the template's end-of-turn tokens.
* ``PlainRenderer`` writes one ``role: content`` line per message and ends an assistant reply with
  a newline; sampling stops at ``"\\n"``. It works with any tokenizer, including the mock's bytes.

``get_renderer(tokenizer)`` picks the first when the tokenizer has a chat template.

Records (one JSON object per line of a dataset) come in two shapes, both understood by
``render_record``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (chat) and
``{"prompt": "...", "completion": "..."}`` (raw text: the completion is followed by EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

import tinker_std as ts

__all__ = [
    "Message",
    "Renderer",
    "PlainRenderer",
    "ChatTemplateRenderer",
    "get_renderer",
    "render_record",
    "prompt_of_record",
    "normalize_weights",
    "datum_from_tokens",
    "make_datum",
    "Reduction",
]

Message = Mapping[str, str]
Reduction = Literal["mean", "none"]
Stop = str | list[str] | list[int] | None


class Renderer:
    """Base class: ``supervised`` for training, ``generation_prompt`` + ``stop`` for sampling."""

    name = "base"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def supervised(self, messages: Sequence[Message]) -> tuple[list[int], list[float]]:
        """Tokens of the whole conversation and a weight per token (1 on assistant replies)."""
        raise NotImplementedError

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Tokens of ``messages`` followed by the header of an assistant reply."""
        raise NotImplementedError

    @property
    def stop(self) -> Stop:
        """The ``SamplingParams.stop`` that ends one assistant reply."""
        return None

    def parse_response(self, tokens: Sequence[int]) -> str:
        """The reply text of sampled ``tokens``, without special tokens or the end-of-turn marker."""
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True)).strip()


class PlainRenderer(Renderer):
    """``role: content`` lines; an assistant reply is `` content\\n``, weighted, header not."""

    name = "plain"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def supervised(self, messages: Sequence[Message]) -> tuple[list[int], list[float]]:
        tokens: list[int] = []
        weights: list[float] = []
        for message in messages:
            header = self._encode(f"{message['role']}:")
            body = self._encode(f" {message['content']}\n")
            weight = 1.0 if message["role"] == "assistant" else 0.0
            tokens += header + body
            weights += [0.0] * len(header) + [weight] * len(body)
        return tokens, weights

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        tokens, _ = self.supervised(messages)
        return tokens + self._encode("assistant:")

    @property
    def stop(self) -> Stop:
        return ["\n"]


class ChatTemplateRenderer(Renderer):
    """The tokenizer's ``apply_chat_template``; reply tokens found from rendered prefixes."""

    name = "chat_template"

    def _render(self, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def supervised(self, messages: Sequence[Message]) -> tuple[list[int], list[float]]:
        tokens = self._render(messages, generation_prompt=False)
        weights = [0.0] * len(tokens)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._render(messages[:i], generation_prompt=True)) if i else 0
            prefix = self._render(messages[: i + 1], generation_prompt=False)
            if tokens[: len(prefix)] != prefix:
                raise ValueError(
                    "the chat template does not render conversations prefix by prefix; "
                    "train on the last reply only (put earlier turns in the prompt)"
                )
            weights[start : len(prefix)] = [1.0] * (len(prefix) - start)
        return tokens, weights

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        return self._render(messages, generation_prompt=True)


def get_renderer(tokenizer: Any, name: str = "auto") -> Renderer:
    """``"chat_template"``, ``"plain"``, or ``"auto"``: the chat template when the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")
    if name == "chat_template" or (name == "auto" and has_template):
        return ChatTemplateRenderer(tokenizer)
    if name in ("plain", "auto"):
        return PlainRenderer(tokenizer)
    raise ValueError(f"unknown renderer {name!r}; use auto, plain or chat_template")


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [int(eos)]


def render_record(renderer: Renderer, record: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """Tokens and weights of one dataset record (chat ``messages`` or ``prompt``/``completion``)."""
    if "messages" in record:
        return renderer.supervised(record["messages"])
    tok = renderer.tokenizer
    prompt = list(tok.encode(record["prompt"], add_special_tokens=True))
    completion = list(tok.encode(record["completion"], add_special_tokens=False)) + _eos(tok)
    return prompt + completion, [0.0] * len(prompt) + [1.0] * len(completion)


def prompt_of_record(renderer: Renderer, record: Mapping[str, Any]) -> tuple[list[int], str, Stop]:
    """``(prompt tokens, expected answer text, stop)`` of a record: for chat, everything up to the
    last assistant reply; for raw text, the prompt (the answer ends at EOS)."""
    if "messages" in record:
        messages = list(record["messages"])
        if messages and messages[-1]["role"] == "assistant":
            return renderer.generation_prompt(messages[:-1]), str(messages[-1]["content"]), renderer.stop
        return renderer.generation_prompt(messages), "", renderer.stop
    prompt = list(renderer.tokenizer.encode(record["prompt"], add_special_tokens=True))
    return prompt, str(record.get("completion", "")), None


def normalize_weights(weights: Sequence[float], reduction: Reduction = "mean") -> list[float]:
    """``"mean"``: scale so the weights sum to 1 (each example counts once, whatever its length);
    ``"none"``: unchanged (the loss is a plain sum over tokens, LOSS-1)."""
    if reduction == "none":
        return list(weights)
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else list(weights)


def make_datum(model_input: Sequence[int], **loss_fn_inputs: Sequence[Any]) -> ts.Datum:
    """A ``Datum`` from plain (nested) lists: ``target_tokens`` as int64, every other input float32."""
    tensors = {
        key: ts.TensorData.from_numpy(np.asarray(value, dtype=np.int64 if key == "target_tokens" else np.float32))
        for key, value in loss_fn_inputs.items()
    }
    return ts.Datum(model_input=ts.ModelInput.from_ints(list(model_input)), loss_fn_inputs=tensors)


def datum_from_tokens(tokens: Sequence[int], weights: Sequence[float]) -> ts.Datum:
    """The ALN shift: input ``tokens[:-1]`` predicts ``tokens[1:]``, weighted by ``weights[1:]``."""
    if len(tokens) < 2 or len(tokens) != len(weights):
        raise ValueError(f"need >= 2 tokens and one weight per token, got {len(tokens)} and {len(weights)}")
    return make_datum(tokens[:-1], target_tokens=tokens[1:], weights=weights[1:])
