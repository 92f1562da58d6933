"""Shared setup of the mock backend tests (``tests/test_mock_backend.py``, ``tests/test_mock_sampling.py``):
a started backend, data and sampling helpers, and an independent numpy reference of the forward pass."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from tinker_std.backend import SampleRequest
from tinker_std.backends.mock import ByteTokenizer, LoraAdapter, MockBackend, base_weights
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput, SampleResponse, SamplingParams

MODEL = "mock/tiny"
T = TypeVar("T")
TOKENIZER = ByteTokenizer()
PROMPT = TOKENIZER.encode("The quick brown fox")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_backend(checkpoint_dir: Path) -> MockBackend:
    """A started mock backend (what the tests' ``backend`` fixture gives)."""
    b = MockBackend(checkpoint_dir=checkpoint_dir)
    run(b.start())
    return b


def datum(tokens: Sequence[int]) -> Datum:
    """Cross-entropy datum over ``tokens`` shifted by one."""
    return Datum(
        model_input=ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={"target_tokens": list(tokens[1:]), "weights": [1.0] * (len(tokens) - 1)},
    )


def text_data(*texts: str) -> list[Datum]:
    return [datum(TOKENIZER.encode(t)) for t in texts]


def new_model(b: MockBackend, seed: int = 7, **lora: Any) -> str:
    return run(b.create_model(MODEL, LoraConfig(rank=4, seed=seed, **lora))).model_id


def train(b: MockBackend, model_id: str, data: list[Datum], steps: int = 1, lr: float = 0.05) -> None:
    for _ in range(steps):
        run(b.forward_backward(model_id, data, "cross_entropy", {}, True))
        run(b.optim_step(model_id, AdamParams(learning_rate=lr)))


def adapter_of(b: MockBackend, model_id: str, lora: LoraConfig) -> LoraAdapter:
    weights = run(b.read_state(model_id)).weights
    tensors = {name: torch.from_numpy(np.array(w)) for name, w in weights.items()}
    return LoraAdapter.from_tensors(lora, base_weights(MODEL).config, tensors, trainable=False)


def sample(
    b: MockBackend,
    sampler_id: str,
    prompt: list[int] = PROMPT,
    num_samples: int = 1,
    prompt_logprobs: bool = False,
    topk: int = 0,
    **params: Any,
) -> SampleResponse:
    request = SampleRequest(
        prompt=prompt,
        num_samples=num_samples,
        sampling_params=SamplingParams(**params),
        include_prompt_logprobs=prompt_logprobs,
        topk_prompt_logprobs=topk,
    )
    return run(b.sample(sampler_id, request))


def base_sampler(b: MockBackend) -> str:
    return run(b.create_sampler(base_model=MODEL)).sampler_id


# -- an independent numpy reimplementation of the forward pass --------------------------------


def reference_logprobs(tokens: Sequence[int], adapter: dict[str, np.ndarray], scaling: float) -> np.ndarray:
    """log_softmax of the logits (T, V), position by position, from the documented architecture."""
    w = {name: t.numpy() for name, t in base_weights(MODEL).tensors.items()}
    cfg = base_weights(MODEL).config

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        y = x @ w[name].T
        if f"{name}.lora_A" in adapter:
            y = y + scaling * ((x @ adapter[f"{name}.lora_A"].T) @ adapter[f"{name}.lora_B"].T)
        return y

    def norm(x: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)

    n = len(tokens)
    x = w["embed"][list(tokens)] + w["pos"][:n]
    nx = norm(x)
    q, k, v = lin(nx, "attn.q"), lin(nx, "attn.k"), lin(nx, "attn.v")
    mixed = np.zeros_like(x)
    hd = cfg.head_dim
    for h in range(cfg.n_heads):
        cols = slice(h * hd, (h + 1) * hd)
        for t in range(n):
            scores = k[: t + 1, cols] @ q[t, cols] / math.sqrt(hd)
            p = np.exp(scores - scores.max())
            mixed[t, cols] = (p / p.sum()) @ v[: t + 1, cols]
    h1 = x + lin(mixed, "attn.o")
    n1 = norm(h1)
    gate = lin(n1, "mlp.gate")
    h2 = h1 + lin(gate / (1 + np.exp(-gate)) * lin(n1, "mlp.up"), "mlp.down")
    logits = lin(norm(h2), "lm_head")
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
