"""Token-incremental OpenAI streams: each token is sent while the request is still decoding.

On a backend with incremental decode (``Backend.incremental_decode``: the torch backend) every
prompt of a request is sampled with ``sample_with_sink``: the decode loop reports each token to a
``TokenSink`` as it takes it, the sink puts it on this request's queue, and the HTTP stream sends
it. Each sampling request's response, when it settles, ends its choices: it is the authority
(``generate.cut_completion`` makes the same ``Completion`` as a non-streamed reply), so the text
deltas of a choice join to exactly the non-streamed text and its per-token logprobs are the same.

Which text a token releases (``ChoiceText``): the decoding of the choice's tokens so far, less
- a tail that ends inside a UTF-8 character (the next token completes it);
- a tail that could be the start of a stop string (held until the next token decides it);
- everything after a stop string (the text ends there; the sequence's later tokens, if any, are
  still in its logprobs, as in the whole reply) or after the end-of-sequence token (tokens after
  it are not part of the completion and are not sent).
The last chunk of a choice carries the rest of its text and its ``finish_reason``.

``close()`` (called when the HTTP client disconnects) makes the sink raise ``SinkClosed`` at the
request's next token: the engine stops decoding it, and its response settles with
``RequestFailedError``.

A backend without incremental decode sends the finished reply in chunks instead (``replies``);
``GET /models`` says which a server does (``streaming``), and docs/openai.md states it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from tinker_std.backend import SinkClosed, Tokenizer, TokenSink
from tinker_std.client.sampling import SamplingClient, sample_with_sink
from tinker_std.types import ModelInput, SampleResponse, SamplingParams

from .generate import Completion, cut_completion

__all__ = ["ChoiceText", "FinishEvent", "IncrementalSampling", "TokenEvent"]


@dataclass(frozen=True)
class TokenEvent:
    """A token of choice ``choice`` and the text it releases (maybe ``""``), from ``offset`` of the choice's text."""

    choice: int
    token: int
    logprob: float
    top: list[tuple[int, float]] | None
    text: str
    offset: int


@dataclass(frozen=True)
class FinishEvent:
    """Choice ``choice`` is complete: ``text`` is the rest of its text (from ``offset``)."""

    choice: int
    text: str
    offset: int
    completion: Completion


@dataclass(frozen=True)
class _Decoded:
    choice: int
    token: int
    logprob: float
    top: list[tuple[int, float]] | None


class ChoiceText:
    """The text of one choice as its tokens arrive (see the module doc for what is held back)."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.tokens: list[int] = []
        self.emitted = ""
        self.ended = False  # past the end-of-sequence token: later tokens are not in the completion
        self.cut = False  # past a stop string: the text is final

    def push(self, token: int) -> str | None:
        """The text ``token`` releases; ``None`` when the token is not part of the completion."""
        if self.ended:
            return None
        self.tokens.append(token)
        if self.cut:
            return ""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.ended = token == self.tokenizer.eos_token_id
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            text, self.cut = text[: min(hits)], True
            safe = len(text)
        elif self.ended:
            safe = len(text)
        elif text.endswith("\ufffd"):
            return ""
        else:
            safe = len(text) - _held(text, self.stop)
        out = text[len(self.emitted) : safe] if safe > len(self.emitted) else ""
        self.emitted += out
        return out

    def finish(self, completion: Completion) -> str:
        """The rest of the completion's text (all of it that was not released yet)."""
        rest = completion.text[len(self.emitted) :]
        self.emitted += rest
        return rest


def _held(text: str, stop: list[str]) -> int:
    """The length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class IncrementalSampling:
    """The ``n`` completions of each prompt, sampled with a token sink; ``events()`` yields their
    tokens in decode order and each choice's end when its request settles. Choice ``p * n + j``
    is sequence ``j`` of prompt ``p`` (as in the whole reply)."""

    def __init__(
        self,
        client: SamplingClient,
        prompts: list[list[int]],
        *,
        n: int,
        params: SamplingParams,
        stop: list[str],
        top_logprobs: int,
        track: Callable[[Future[SampleResponse]], None],
    ) -> None:
        self.tokenizer = client.get_tokenizer()
        self.prompts, self.n, self.stop, self.with_top = prompts, n, stop, top_logprobs > 0
        self.choices = [ChoiceText(self.tokenizer, stop) for _ in range(len(prompts) * n)]
        self.closed = False
        self._queue: queue.SimpleQueue[_Decoded | tuple[int, Future[SampleResponse]]] = queue.SimpleQueue()
        futures = [
            sample_with_sink(
                client,
                ModelInput.from_ints(tokens),
                n,
                params,
                self._sink(p),
                topk_sample_logprobs=top_logprobs,
            ).future()
            for p, tokens in enumerate(prompts)
        ]
        for p, future in enumerate(futures):
            track(future)
            future.add_done_callback(lambda done, p=p: self._queue.put((p, done)))  # type: ignore[misc]

    def close(self) -> None:
        """Stop every request still decoding (its client went away): see the module doc."""
        self.closed = True

    def _sink(self, prompt: int) -> TokenSink:
        def on_token(sequence: int, token: int, logprob: float, top: list[tuple[int, float]] | None) -> None:
            if self.closed:
                raise SinkClosed("the client of the OpenAI stream disconnected")
            self._queue.put(_Decoded(prompt * self.n + sequence, token, logprob, top))

        return on_token

    def events(self) -> Iterator[TokenEvent | FinishEvent]:
        """Every token and choice end, as they come (blocking); a request's error is raised when
        its response settles."""
        pending = len(self.prompts)
        while pending:
            item = self._queue.get()
            if isinstance(item, _Decoded):
                state = self.choices[item.choice]
                offset = len(state.emitted)
                text = state.push(item.token)
                if text is not None:
                    yield TokenEvent(item.choice, item.token, item.logprob, item.top, text, offset)
                continue
            p, future = item
            pending -= 1
            response = future.result()
            for j, seq in enumerate(response.sequences):
                state = self.choices[p * self.n + j]
                completion = cut_completion(self.tokenizer, seq, self.stop, self.with_top)
                offset = len(state.emitted)
                yield FinishEvent(p * self.n + j, state.finish(completion), offset, completion)
