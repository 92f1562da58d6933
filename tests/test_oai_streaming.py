"""Token-incremental OpenAI streams of ``tinker-std serve`` (``server/oai/stream.py``) with real
loopback HTTP: tokens leave while the engine is still decoding, a backend without incremental
decode sends the finished reply, and a client that hangs up stops its generation. Deterministic:
the backend's token sink is gated, nothing is timed. Setup: ``tests/oai_support.py``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from oai_support import KEY, World, client, openai, serving_world
from oai_support import stream_completion as _stream_completion

import tinker_std as ts
from tinker_std.server import TinkerServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serving_world(tmp_path_factory) as served:
        yield served


def test_a_stream_sends_tokens_while_the_request_is_still_decoding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic, no timing: the backend's token sink is wrapped so that the engine stops after
    its second token until the test has read the stream's first chunk. A server that sent the reply
    only when generation ended could not deliver that chunk before the gate opens (after 30 s
    the gate gives up, and the assertion below fails)."""
    args = dict(model=world.base, prompt="def add(a, b):", max_tokens=12, temperature=0.9, seed=21, logprobs=0)
    whole = client(world).completions.create(**args).choices[0]
    assert len(whole.logprobs.tokens) >= 3, "the gate needs a completion of 3 tokens or more"
    backend = world.service.backend
    original = backend.sample
    release, gave_up, reported = threading.Event(), threading.Event(), []

    async def gated(sampler_id: str, request: Any) -> Any:
        sink = request.on_tokens
        if sink is None:
            return await original(sampler_id, request)

        def gate(sequence: int, token: int, logprob: float, top: Any) -> None:
            sink(sequence, token, logprob, top)
            reported.append(token)
            if len(reported) == 2 and not release.wait(30):
                gave_up.set()

        return await original(sampler_id, dataclasses.replace(request, on_tokens=gate))

    monkeypatch.setattr(backend, "sample", gated)
    stream = client(world).completions.create(**args, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    assert not gave_up.is_set() and 1 <= len(reported) <= 2, "the first chunk came only after the request finished"
    assert first.choices[0].logprobs.tokens == whole.logprobs.tokens[:1]
    release.set()
    rest = list(chunks)
    assert not gave_up.is_set()
    assert "".join(c.choices[0].text for c in [first, *rest]) == whole.text
    assert rest[-1].choices[0].finish_reason == whole.finish_reason
    assert len(reported) >= len(whole.logprobs.tokens)  # every token went through the sink


def test_a_backend_without_incremental_decode_streams_the_finished_reply(world: World, tmp_path: Path) -> None:
    """The mock backend does not decode incrementally: ``GET /models`` says so and a stream carries
    the finished reply (the same text and logprobs). Its own checkpoint folder: ``/models`` also
    lists saved sampler weights, which the default folder may hold from earlier runs."""
    service = ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path))
    try:
        with TinkerServer(service, api_key=KEY) as server:
            oai = openai.OpenAI(base_url=server.url + "/oai/api/v1", api_key=KEY, max_retries=0)
            (model,) = oai.models.list()
            assert model.streaming == "after_generation"
            args = dict(model=model.id, prompt=[1, 2, 3], max_tokens=6, seed=4, logprobs=0)
            whole = oai.completions.create(**args).choices[0]
            text, lps, _, reason = _stream_completion(oai, **args)
            assert (text, lps, reason) == (whole.text, whole.logprobs.token_logprobs, whole.finish_reason)
    finally:
        service.close()


def test_a_client_that_disconnects_mid_stream_stops_its_generation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic, no timing: the backend's token sink is wrapped so that the engine waits after
    its first token until the stream is closed (``IncrementalSampling.close``, called on the ASGI
    ``http.disconnect``). The raw client reads the first chunk and hangs up; the sink then refuses
    the second token (``SinkClosed``), the request settles with ``RequestFailedError`` after 2 of its
    40 tokens, and the server answers the next request as before."""
    from tinker_std.server.oai.stream import IncrementalSampling

    args = dict(model=world.base, prompt="def add(a, b):", max_tokens=40, temperature=0.9, seed=21)
    whole = client(world).completions.create(**args, logprobs=0).choices[0]
    assert len(whole.logprobs.tokens) > 2, "the completion must outlive the disconnect"
    backend = world.service.backend
    original, close = backend.sample, IncrementalSampling.close
    closed, settled, reported, errors = threading.Event(), threading.Event(), [], []

    def closing(self: IncrementalSampling) -> None:
        close(self)
        closed.set()

    async def gated(sampler_id: str, request: Any) -> Any:
        sink = request.on_tokens
        if sink is None:
            return await original(sampler_id, request)

        def gate(sequence: int, token: int, logprob: float, top: Any) -> None:
            reported.append(token)
            sink(sequence, token, logprob, top)
            if len(reported) == 1:
                closed.wait(30)

        try:
            return await original(sampler_id, dataclasses.replace(request, on_tokens=gate))
        except Exception as exc:
            errors.append(exc)
            raise
        finally:
            settled.set()

    monkeypatch.setattr(backend, "sample", gated)
    monkeypatch.setattr(IncrementalSampling, "close", closing)
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=world.url + "/oai/api/v1", headers=headers, timeout=30) as http:
        with http.stream("POST", "/completions", json={**args, "stream": True}) as response:
            assert response.status_code == 200
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
            assert first.startswith("data: {"), first
        assert settled.wait(30), "the request never settled"
    assert closed.is_set(), "the disconnect did not close the stream"
    assert len(reported) == 2, reported  # token 1 and the refused 2nd: not 40
    assert len(errors) == 1 and isinstance(errors[0], ts.RequestFailedError), errors
    monkeypatch.undo()
    again = client(world).completions.create(**args, logprobs=0).choices[0]
    assert again.text == whole.text and again.finish_reason == whole.finish_reason
