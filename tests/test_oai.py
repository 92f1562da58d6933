"""The OpenAI-compatible API of ``tinker-std serve`` (``/oai/api/v1``) with the official ``openai``
client over real loopback HTTP, on the torch backend's tiny model.

References are independent of the OpenAI layer: the served ``ServiceClient``'s own
``SamplingClient`` (same seed: tokens must be identical, SMP-12; logprobs within the fp32 class,
ATOL), ``compute_logprobs`` of the prompt plus completion (teacher-forced: ATOL), the tokenizer's
own ``decode`` and ``apply_chat_template``, and the official Tinker SDK for training and sampler
paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from oai_support import (
    ATOL,
    KEY,
    OTHER_KEY,
    World,
    client,
    openai,
    piece,
    reference,
    serving_world,
)
from oai_support import stream_completion as _stream_completion

import tinker_std as ts
from tinker_std.server import TinkerServer

tinker = pytest.importorskip("tinker")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serving_world(tmp_path_factory) as served:
        yield served


def test_completion_equals_the_servers_own_sample_and_logprobs(world: World) -> None:
    sampler = reference(world, world.base)
    tok = sampler.get_tokenizer()
    prompt = "def add(a, b):"
    got = client(world).completions.create(
        model=world.base, prompt=prompt, max_tokens=12, temperature=0.9, top_p=0.8, seed=11, logprobs=3
    )
    (choice,) = got.choices
    want = (
        sampler.sample(
            ts.ModelInput.from_ints(tok.encode(prompt)),
            1,
            ts.SamplingParams(max_tokens=12, temperature=0.9, top_p=0.8, seed=11),
            topk_sample_logprobs=3,
        )
        .result()
        .sequences[0]
    )
    tokens = want.tokens  # through EOS, if it came: in the logprobs, not in the text
    assert choice.text == tok.decode(tokens, skip_special_tokens=True)
    assert choice.logprobs.tokens == [piece(tok, t) for t in tokens]
    np.testing.assert_allclose(choice.logprobs.token_logprobs, want.logprobs[: len(tokens)], rtol=0, atol=ATOL)
    teacher = sampler.compute_logprobs(ts.ModelInput.from_ints(tok.encode(prompt) + tokens)).result()
    np.testing.assert_allclose(choice.logprobs.token_logprobs, teacher[-len(tokens) :], rtol=0, atol=ATOL)
    for row, lp, (top_id, top_lp) in zip(
        choice.logprobs.top_logprobs,
        choice.logprobs.token_logprobs,
        [r[0] for r in want.topk_logprobs[: len(tokens)]],
        strict=True,
    ):
        assert len(row) == 3 and max(row.values()) >= lp - ATOL
        assert abs(row[piece(tok, top_id)] - top_lp) <= ATOL
    assert choice.finish_reason == ("stop" if want.stop_reason == "stop" else "length")
    assert got.usage.prompt_tokens == len(tok.encode(prompt)) and got.usage.completion_tokens == len(tokens)


def test_streaming_equals_the_whole_reply(world: World) -> None:
    oai = client(world)
    args = dict(model=world.base, prompt=["x = 1", "print("], max_tokens=10, seed=5, n=2, logprobs=1)
    whole = oai.completions.create(**args)
    texts: dict[int, str] = {}
    logprobs: dict[int, list[float]] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in oai.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.logprobs is not None:
                logprobs.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    assert len(whole.choices) == 4
    for c in whole.choices:
        assert texts[c.index] == c.text and finish[c.index] == c.finish_reason
        assert logprobs.get(c.index, []) == c.logprobs.token_logprobs
    assert whole.choices[0].text != whole.choices[1].text  # n draws are distinct sequences
    assert usage == whole.usage


def test_streams_keep_stop_strings_max_tokens_and_logprobs_of_the_whole_reply(world: World) -> None:
    oai = client(world)
    args = dict(model=world.base, prompt="for i in", temperature=0, logprobs=2)
    full = oai.completions.create(**args, max_tokens=24).choices[0]
    visible = full.text.strip()
    assert len(visible) >= 4, full.text
    for extra in ({"max_tokens": 24, "stop": [visible[2:4], "@@"]}, {"max_tokens": 5}, {"max_tokens": 24}):
        whole = oai.completions.create(**args, **extra).choices[0]
        text, lps, offsets, reason = _stream_completion(oai, **args, **extra)
        assert (text, reason) == (whole.text, whole.finish_reason), extra
        assert lps == whole.logprobs.token_logprobs and offsets == whole.logprobs.text_offset, extra
        if "stop" in extra:
            assert reason == "stop" and text == full.text[: full.text.find(visible[2:4])]
        elif extra["max_tokens"] == 5:
            assert reason == "length" and len(lps) == 5
    tops = [
        c.choices[0].logprobs.top_logprobs[0]
        for c in oai.completions.create(**args, max_tokens=6, stream=True)
        if c.choices and c.choices[0].logprobs is not None
    ]
    assert tops == oai.completions.create(**args, max_tokens=6).choices[0].logprobs.top_logprobs


def test_a_streamed_choice_holds_back_only_what_a_stop_string_could_still_take(world: World) -> None:
    """``ChoiceText`` against the tokenizer's own decoding of each prefix: a tail ``@`` (the start
    of stop string ``@@``) is held until the next token decides it; the text ends before ``@@``;
    a token after it releases nothing; an EOS ends the choice."""
    from transformers import AutoTokenizer

    from tinker_std.server.oai.stream import ChoiceText

    tok = AutoTokenizer.from_pretrained(world.base, local_files_only=True)
    ids = tok.encode("ab@c@@d", add_special_tokens=False)
    text = ChoiceText(tok, ["@@"])
    released = ""
    for i, token in enumerate(ids):
        released += text.push(token) or ""
        full = tok.decode(ids[: i + 1], skip_special_tokens=True)
        if "@@" in full:
            assert released == full[: full.find("@@")] == "ab@c"
        else:
            assert released == (full[:-1] if full.endswith("@") else full), (i, full, released)
    assert text.cut and text.push(ids[0]) == ""  # past the stop string: logprobs only, no text
    ended = ChoiceText(tok, [])
    assert ended.push(ids[0]) == tok.decode(ids[:1]) and ended.push(tok.eos_token_id) == ""
    assert ended.push(ids[1]) is None  # after EOS: not part of the completion


def test_a_stream_refused_before_its_first_token_is_an_http_error(world: World) -> None:
    """The engine's own refusal (``ContextLengthError``, found when the request is decoded) comes
    before any token: an ordinary 400 naming the field, not an error inside a started stream."""
    with pytest.raises(openai.BadRequestError) as refused:
        client(world).completions.create(model=world.base, prompt="x", max_tokens=10_000, stream=True)
    assert (refused.value.param, refused.value.code) == ("max_tokens", "ContextLengthError")


def test_chat_uses_the_tokenizers_template_and_streams_the_same(world: World) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    oai = client(world)
    got = oai.chat.completions.create(
        model=world.chat, messages=messages, max_tokens=8, seed=3, logprobs=True, top_logprobs=2
    )
    hf = AutoTokenizer.from_pretrained(world.chat, local_files_only=True)
    rendered = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<user>hello\n<assistant>")
    prompt = hf.encode(rendered, add_special_tokens=False)
    sampler = reference(world, world.chat)
    want = sampler.sample(ts.ModelInput.from_ints(prompt), 1, ts.SamplingParams(max_tokens=8, seed=3)).result()
    tokens = want.sequences[0].tokens
    (choice,) = got.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == hf.decode(tokens, skip_special_tokens=True)
    teacher = sampler.compute_logprobs(ts.ModelInput.from_ints(prompt + tokens)).result()
    got_lp = [c.logprob for c in choice.logprobs.content]
    np.testing.assert_allclose(got_lp, teacher[len(prompt) :], rtol=0, atol=ATOL)  # same length too
    assert all(len(c.top_logprobs) == 2 for c in choice.logprobs.content)
    assert got.usage.prompt_tokens == len(prompt)

    streamed, lps, reason = "", [], None
    for chunk in oai.chat.completions.create(
        model=world.chat, messages=messages, max_tokens=8, seed=3, logprobs=True, top_logprobs=2, stream=True
    ):
        (c,) = chunk.choices
        streamed += c.delta.content or ""
        lps += [x.logprob for x in (c.logprobs.content if c.logprobs else [])]
        reason = c.finish_reason or reason
    assert streamed == choice.message.content and lps == got_lp and reason == choice.finish_reason


def test_stop_strings_cut_the_text_like_openai(world: World) -> None:
    oai = client(world)
    full = oai.completions.create(model=world.base, prompt="for i in", max_tokens=24, temperature=0).choices[0]
    visible = full.text.strip()
    assert len(visible) >= 4, full.text
    stop = visible[2:4]
    cut = oai.completions.create(
        model=world.base, prompt="for i in", max_tokens=24, temperature=0, stop=[stop, "@@1", "@@2", "@@3", "@@4"]
    )  # 5 strings: no limit of 4
    (choice,) = cut.choices
    assert choice.text == full.text[: full.text.find(stop)] and choice.finish_reason == "stop"


def test_echo_logprobs_score_the_prompt_as_compute_logprobs(world: World) -> None:
    """What lm-eval's ``local-completions`` sends for a loglikelihood request."""
    sampler = reference(world, world.base)
    prompt = sampler.get_tokenizer().encode("print(add(2, 3))")
    got = client(world).completions.create(
        model=world.base, prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    lp = got.choices[0].logprobs
    want = sampler.compute_logprobs(ts.ModelInput.from_ints(prompt)).result()
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(prompt) + 1  # + the generated token
    np.testing.assert_allclose(lp.token_logprobs[1 : len(prompt)], want[1:], rtol=0, atol=ATOL)
    assert got.choices[0].text.startswith(sampler.get_tokenizer().decode(prompt))


def test_a_sampler_path_serves_the_trained_weights_and_only_to_its_tenant(world: World) -> None:
    sdk = tinker.ServiceClient(base_url=world.url, api_key=KEY)
    training = sdk.create_lora_training_client(base_model=world.base, rank=4, seed=0).result()
    tok = training.get_tokenizer()
    prompt = tok.encode("def add(a, b):")
    target = tok.encode(" return a + b")
    tokens = prompt + target
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [0.0] * (len(prompt) - 1) + [1.0] * len(target)},
    )
    for _ in range(6):
        training.forward_backward([datum], "cross_entropy").result()
        training.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
    path = training.save_weights_for_sampler("oai").result().path
    assert path.startswith("tinker://") and "/sampler_weights/" in path

    oai = client(world)
    args = dict(prompt=prompt, max_tokens=len(target), temperature=0, logprobs=0)
    tuned = oai.completions.create(model=path, **args).choices[0]
    base = oai.completions.create(model=world.base, **args).choices[0]
    want = (
        sdk.create_sampling_client(model_path=path)
        .result()
        .sample(tinker.ModelInput.from_ints(prompt), 1, tinker.SamplingParams(max_tokens=len(target), temperature=0))
        .result()
        .sequences[0]
    )
    assert tuned.text == tok.decode(want.tokens, skip_special_tokens=True)
    np.testing.assert_allclose(tuned.logprobs.token_logprobs, want.logprobs, rtol=0, atol=ATOL)
    assert tuned.text != base.text  # training changed what the path serves
    assert oai.completions.create(model=f"{world.base};{path}", **args).choices[0].text == tuned.text

    with pytest.raises(openai.NotFoundError) as refused:
        client(world, OTHER_KEY).completions.create(model=path, **args)
    assert refused.value.param == "model"
    mine = {m.id: m for m in oai.models.list()}
    assert path in mine and mine[path].root == world.base and mine[path].owned_by == "alice"
    assert all(m.streaming == "incremental" for m in mine.values())  # the torch backend decodes incrementally
    training_path = training.save_state("oai-state").result().path  # not a sampler checkpoint: not listed
    assert training_path not in {m.id for m in oai.models.list()}
    theirs = {m.id for m in client(world, OTHER_KEY).models.list()}
    assert theirs == {m for m in mine if not m.startswith("tinker://")}  # another tenant's never appear
    with pytest.raises(openai.BadRequestError) as wrong_base:
        oai.completions.create(model=f"{world.chat}x;{path}", **args)
    assert wrong_base.value.param == "model"


@pytest.mark.parametrize(
    ("field", "extra"),
    [
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("presence_penalty", {"presence_penalty": -1.0}),
        ("logit_bias", {"logit_bias": {"5": 10}}),
        ("user", {"user": "someone"}),
        ("suffix", {"suffix": "!"}),
        ("best_of", {"best_of": 3}),
        ("logprobs", {"logprobs": 21}),
        ("stream_options", {"stream_options": {"include_usage": True}}),
        ("guided_json", {"extra_body": {"guided_json": {}}}),
        ("max_tokens", {"max_tokens": 0}),
        ("n", {"n": 0}),
        ("n", {"n": True}),  # strict: not coerced to 1
        ("top_p", {"top_p": 0.0}),
        ("stop", {"stop": ["a", ""]}),
    ],
)
def test_completions_refuse_what_they_do_not_implement(world: World, field: str, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(world).completions.create(model=world.base, prompt="x", **extra)
    assert refused.value.param == field, refused.value.body
    assert refused.value.code == "BadRequestError"


@pytest.mark.parametrize(
    ("field", "extra"),
    [
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("top_logprobs", {"top_logprobs": 2}),
        ("max_completion_tokens", {"max_tokens": 4, "max_completion_tokens": 4}),
        (
            "messages[0].content[0].type",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        ),
        ("messages[0].role", {"messages": [{"role": "tool", "content": "x"}]}),
        ("reasoning_effort", {"reasoning_effort": "high"}),
        ("messages[0].tool_call_id", {"messages": [{"role": "user", "content": "x", "tool_call_id": "1"}]}),
        ("messages[0].name", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}),  # TEMPLATE has no names
        ("logprobs", {"logprobs": 1}),  # strict: a bool field, not coerced
        ("echo", {"extra_body": {"echo": True}}),
    ],
)
def test_chat_refuses_what_it_does_not_implement(world: World, field: str, extra: dict[str, Any]) -> None:
    args: dict[str, Any] = {"model": world.chat, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client(world).chat.completions.create(**args)
    assert refused.value.param == field, refused.value.body


def test_chat_without_a_template_keys_limits_and_models(world: World) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(world).chat.completions.create(model=world.base, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.param == "messages" and "chat template" in refused.value.message
    with pytest.raises(openai.AuthenticationError):
        client(world, "tml-wrong").completions.create(model=world.base, prompt="x")
    with pytest.raises(openai.NotFoundError) as unknown:
        client(world).completions.create(model="no-such-model", prompt="x")
    assert unknown.value.param == "model"
    for field, code, extra in [
        ("n", "LimitExceededError", {"n": 100_000}),
        ("max_tokens", "ContextLengthError", {"max_tokens": 10_000}),
    ]:
        with pytest.raises(openai.BadRequestError) as limited:  # the library's checks, named as OpenAI names them
            client(world).completions.create(model=world.base, prompt="x", **extra)
        assert (limited.value.param, limited.value.code) == (field, code), limited.value.body
    listed = [m.id for m in client(world).models.list()]
    assert world.service.get_server_capabilities().supported_models[0].model_name in listed
    raw = httpx.post(world.url + "/oai/api/v1/completions", content=b"{", headers={"X-API-Key": KEY})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "body"


def _sampled_tokens(world: World, tenant: str) -> float:
    text = httpx.get(world.url + "/metrics", headers={"X-API-Key": KEY}).text
    for line in text.splitlines():
        if line.startswith(f'tinker_std_sampled_tokens_total{{tenant="{tenant}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_requests_count_in_the_tenants_metrics_and_quota(world: World) -> None:
    before = _sampled_tokens(world, "alice")
    reply = client(world).completions.create(model=world.base, prompt="x", max_tokens=5, n=2, seed=0)
    assert _sampled_tokens(world, "alice") - before == reply.usage.completion_tokens  # no stop strings: the same
    with TinkerServer(world.service, api_key=KEY, max_queued_per_tenant=0) as full:  # every request over quota
        oai = openai.OpenAI(base_url=full.url + "/oai/api/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            oai.completions.create(model=world.base, prompt="x", max_tokens=2)
        assert refused.value.code == "TenantQueueFull"
