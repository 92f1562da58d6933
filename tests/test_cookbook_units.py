"""Cookbook building blocks: renderers, weights, alignment, schedules, data order (plots: test_cookbook_plotting.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tinker_std.backends.mock import ByteTokenizer
from tinker_std.cookbook import common, renderers

TOK = ByteTokenizer()
SMOLLM2 = Path.home() / ".cache" / "tinker-std" / "models" / "SmolLM2-135M-Instruct"


class ChatMLBytes(ByteTokenizer):
    """A byte tokenizer with a ChatML-style chat template written in Python."""

    chat_template = "chatml"

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        text = "".join(f"<s>{m['role']}\n{m['content']}</s>\n" for m in messages)
        return text + ("<s>assistant\n" if add_generation_prompt else "")


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def weighted_text(tokenizer: Any, tokens: list[int], weights: list[float]) -> str:
    return str(tokenizer.decode([t for t, w in zip(tokens, weights, strict=True) if w]))


def test_plain_renderer_weights_only_assistant_replies() -> None:
    r = renderers.get_renderer(TOK)
    assert isinstance(r, renderers.PlainRenderer)
    tokens, weights = r.supervised(CONVERSATION)
    assert TOK.decode(tokens) == "system: Be brief.\nuser: Hi\nassistant: Hello.\nuser: 2+2?\nassistant: 4\n"
    assert weighted_text(TOK, tokens, weights) == " Hello.\n 4\n"
    assert TOK.decode(r.generation_prompt(CONVERSATION[:2])) == "system: Be brief.\nuser: Hi\nassistant:"
    assert r.stop == ["\n"]
    assert r.parse_response(TOK.encode(" 4\n")) == "4"


def test_chat_template_renderer_uses_the_template_and_weights_end_of_turn() -> None:
    tok = ChatMLBytes()
    r = renderers.get_renderer(tok)
    assert isinstance(r, renderers.ChatTemplateRenderer)
    tokens, weights = r.supervised(CONVERSATION)
    assert tok.decode(tokens) == tok.apply_chat_template(CONVERSATION)
    assert weighted_text(tok, tokens, weights) == "Hello.</s>\n4</s>\n"
    assert tok.decode(r.generation_prompt(CONVERSATION[:2])).endswith("<s>user\nHi</s>\n<s>assistant\n")
    assert isinstance(renderers.get_renderer(tok, "plain"), renderers.PlainRenderer)
    with pytest.raises(ValueError, match="unknown renderer"):
        renderers.get_renderer(tok, "nope")


@pytest.mark.slow  # importing transformers takes seconds
@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 tokenizer not cached")
def test_chat_template_renderer_on_a_hugging_face_tokenizer() -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(SMOLLM2))
    r = renderers.get_renderer(tok)
    assert isinstance(r, renderers.ChatTemplateRenderer)
    tokens, weights = r.supervised(CONVERSATION)
    assert weighted_text(tok, tokens, weights) == "Hello.<|im_end|>\n4<|im_end|>\n"
    assert tok.decode(r.generation_prompt(CONVERSATION[:2])).endswith("<|im_start|>assistant\n")


def test_prompt_completion_record_appends_eos_and_weights_completion() -> None:
    r = renderers.get_renderer(TOK)
    tokens, weights = renderers.render_record(r, {"prompt": "Q:", "completion": " A"})
    assert tokens == [*b"Q: A", TOK.eos_token_id]
    assert weights == [0, 0, 1, 1, 1]
    prompt, answer, stop = renderers.prompt_of_record(r, {"prompt": "Q:", "completion": " A"})
    assert (prompt, answer, stop) == (list(b"Q:"), " A", None)
    prompt, answer, stop = renderers.prompt_of_record(r, {"messages": CONVERSATION})
    assert TOK.decode(prompt).endswith("user: 2+2?\nassistant:") and answer == "4" and stop == ["\n"]


def test_normalize_weights_and_the_alignment_shift() -> None:
    assert renderers.normalize_weights([0, 0, 1, 1, 2], "mean") == [0, 0, 0.25, 0.25, 0.5]
    assert renderers.normalize_weights([0, 1, 1], "none") == [0, 1, 1]
    datum = renderers.datum_from_tokens([10, 11, 12, 13], [0, 0, 0.5, 0.5])
    assert datum.model_input.to_ints() == [10, 11, 12]
    assert datum.loss_fn_inputs["target_tokens"].tolist() == [11, 12, 13]
    assert datum.loss_fn_inputs["weights"].tolist() == [0, 0.5, 0.5]
    with pytest.raises(ValueError):
        renderers.datum_from_tokens([1], [1.0])


def test_lr_schedules_with_warmup() -> None:
    assert [common.lr_at(s, 1.0, 10, "constant", 2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert [common.lr_at(s, 1.0, 10, "linear") for s in (0, 5, 9)] == [1.0, 0.5, pytest.approx(0.1)]
    assert common.lr_at(0, 2.0, 10, "cosine") == 2.0
    assert common.lr_at(5, 2.0, 10, "cosine") == pytest.approx(1.0)
    assert common.lr_at(6, 1.0, 10, "cosine", 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        common.lr_at(0, 1.0, 10, "step")


def test_data_order_covers_each_epoch_and_restores_from_its_state() -> None:
    rng = random.Random(3)
    order = common.DataOrder(5, 2, rng)
    first = [order.next_batch() for _ in range(5)]  # 10 indices: exactly two epochs
    flat = [i for batch in first for i in batch]
    assert sorted(flat[:5]) == sorted(flat[5:]) == [0, 1, 2, 3, 4]
    saved, rng_state = order.state(), rng.getstate()
    expected = [order.next_batch() for _ in range(4)]
    rng2 = random.Random()
    rng2.setstate(rng_state)
    restored = common.DataOrder(5, 2, rng2, json.loads(json.dumps(saved)))
    assert [restored.next_batch() for _ in range(4)] == expected


def test_demo_datasets_are_shipped_and_load() -> None:
    chat = common.load_jsonl("demo:chat")
    assert len(chat) >= 30 and all("messages" in r for r in chat)
    assert all({"prompt", "completion"} <= r.keys() for r in common.load_jsonl("demo:arithmetic"))
    assert all({"prompt", "chosen", "rejected"} <= r.keys() for r in common.load_jsonl("demo:preferences"))
    with pytest.raises(FileNotFoundError, match="shipped"):
        common.load_jsonl("demo:nope")
