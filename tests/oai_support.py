"""Shared setup of the OpenAI-compatible API tests (``tests/test_oai.py``,
``tests/test_oai_streaming.py``): a ``tinker-std serve`` on the torch backend's tiny model with two
tenants, the official ``openai`` client for it, and the references the tests compare with."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import tinker_std as ts
from tinker_std.server import TinkerServer
from tinker_std.server.tenants import Tenants

openai = pytest.importorskip("openai")
os.environ["TINKER_TELEMETRY"] = "0"

KEY, OTHER_KEY = "tml-oai-alice", "tml-oai-bob"
ATOL = 1e-4  # per-element atol of the fp32 class (spec TOL-2): other batch shapes, other GEMM blocks
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@dataclass
class World:
    url: str
    service: ts.ServiceClient
    base: str  # the tiny model's folder: no chat template
    chat: str  # a copy whose tokenizer has TEMPLATE


@contextmanager
def serving_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The server of a test module (its module-scoped ``world`` fixture): torch, ``tiny-llama``
    and a copy with a chat template, tenants alice (``KEY``) and bob (``OTHER_KEY``)."""
    from transformers import AutoTokenizer

    from tinker_std.backends.torch.models import builtin_path

    root = tmp_path_factory.mktemp("oai")
    base = builtin_path("tiny-llama", root / "cache")
    chat = root / "tiny-chat"
    shutil.copytree(base, chat)
    tokenizer = AutoTokenizer.from_pretrained(str(chat), local_files_only=True)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(chat))
    service = ts.ServiceClient(backend="torch", checkpoint_dir=str(root / "ckpt"))
    try:
        with TinkerServer(service, tenants=Tenants({KEY: "alice", OTHER_KEY: "bob"})) as server:
            yield World(server.url, service, str(base), str(chat))
    finally:
        service.close()


def piece(tok: Any, token: int) -> str:
    """A token's name in logprobs: its text, or ``token_id:<id>`` for part of a UTF-8 character."""
    text = tok.decode([token])
    return f"token_id:{token}" if "\ufffd" in text else text


def client(world: World, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=world.url + "/oai/api/v1", api_key=key, max_retries=0)


def reference(world: World, model: str) -> Any:
    return world.service.create_sampling_client(base_model=model).result()


def stream_completion(oai: Any, **args: Any) -> tuple[str, list[float], list[int], str | None]:
    """A completion stream's joined text, per-token logprobs, text offsets and finish reason (one choice)."""
    text, lps, offsets, reason = "", [], [], None
    for chunk in oai.completions.create(**args, stream=True):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                lps += c.logprobs.token_logprobs
                offsets += c.logprobs.text_offset
            reason = c.finish_reason or reason
    return text, lps, offsets, reason
