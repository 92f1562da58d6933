"""The mock base models: tiny but real causal language models in float64.

Architecture (one transformer block, pre-norm, no biases)::

    x      = embed[tokens] + pos[0..T-1]
    h      = x + attn.o(causal_attention(attn.q(n(x)), attn.k(n(x)), attn.v(n(x))))
    h      = h + mlp.down(silu(mlp.gate(n(h))) * mlp.up(n(h)))
    logits = lm_head(n(h))

where ``n(x) = x / sqrt(mean(x**2) + NORM_EPS)`` is a parameter-free RMS normalisation and
attention has ``n_heads`` heads of size ``d_model / n_heads`` scaled by ``1/sqrt(head_dim)``.
Every linear map ``W`` may carry a LoRA adapter (any ``Adapter``; ``lora.LoraAdapter`` is the one
the backend uses): ``W x + scaling * B (A x)``.

Base weights are drawn from a ``torch.Generator`` with a fixed seed, so they are identical in
every process; they are built once per process (``base_weights`` is cached) and never written.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from tinker_std.errors import NotFoundError

from .tokenizer import VOCAB_SIZE

__all__ = [
    "Adapter",
    "ModelConfig",
    "MODELS",
    "BaseWeights",
    "KVCache",
    "base_weights",
    "model_config",
    "forward",
    "NORM_EPS",
]

DTYPE = torch.float64
NORM_EPS = 1e-6
#: Seed of the base weights (the same in every process).
BASE_SEED = 20240917


class Adapter(Protocol):
    """What the forward pass needs of a LoRA adapter: its scaling and the ``(A, B)`` pair of a
    module (``None`` when the module is not adapted)."""

    scaling: float

    def pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor] | None: ...


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one mock model."""

    name: str
    d_model: int = 32
    n_heads: int = 2
    d_mlp: int = 64
    max_context_length: int = 256
    vocab_size: int = VOCAB_SIZE

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(out_features, in_features)`` of every linear map, keyed by module name."""
        d, m = self.d_model, self.d_mlp
        return {
            "attn.q": (d, d),
            "attn.k": (d, d),
            "attn.v": (d, d),
            "attn.o": (d, d),
            "mlp.gate": (m, d),
            "mlp.up": (m, d),
            "mlp.down": (d, m),
            "lm_head": (self.vocab_size, d),
        }


#: The models this backend serves, by name.
MODELS: Mapping[str, ModelConfig] = {"mock/tiny": ModelConfig(name="mock/tiny")}


def model_config(base_model: str) -> ModelConfig:
    """The config of ``base_model``; ``NotFoundError`` listing the supported models otherwise."""
    try:
        return MODELS[base_model]
    except KeyError:
        raise NotFoundError(
            f"base model {base_model!r} is not served by the mock backend; supported: {sorted(MODELS)}"
        ) from None


@dataclass(frozen=True)
class BaseWeights:
    """The frozen weights of one base model: ``embed`` (V, d), ``pos`` (P, d) and one (out, in)
    matrix per linear module (see ``ModelConfig.linear_shapes``). Treat as read-only."""

    config: ModelConfig
    tensors: Mapping[str, torch.Tensor]


@functools.cache
def base_weights(base_model: str) -> BaseWeights:
    """The base weights of ``base_model``, generated deterministically and cached per process.

    Scales: embeddings ~ N(0, 1), positions ~ N(0, 0.3^2), hidden linears ~ N(0, 1/fan_in) and
    ``lm_head`` ~ N(0, 4/d_model), so initial logits have a standard deviation near 2: peaked
    enough for sampling to show structure, flat enough that every token has real probability.
    """
    config = model_config(base_model)
    gen = torch.Generator().manual_seed(BASE_SEED)

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=DTYPE) * std

    tensors = {
        "embed": normal((config.vocab_size, config.d_model), 1.0),
        "pos": normal((config.max_context_length, config.d_model), 0.3),
    }
    for name, (out_f, in_f) in config.linear_shapes().items():
        std = 2.0 / math.sqrt(in_f) if name == "lm_head" else 1.0 / math.sqrt(in_f)
        tensors[name] = normal((out_f, in_f), std)
    for tensor in tensors.values():
        tensor.requires_grad_(False)
    return BaseWeights(config=config, tensors=tensors)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)


def _linear(x: torch.Tensor, name: str, base: BaseWeights, adapter: Adapter | None) -> torch.Tensor:
    out = x @ base.tensors[name].T
    pair = adapter.pair(name) if adapter is not None else None
    if adapter is not None and pair is not None:
        lora_a, lora_b = pair
        out = out + adapter.scaling * ((x @ lora_a.T) @ lora_b.T)
    return out


@dataclass
class KVCache:
    """Keys and values (H, P, head_dim) of the ``P`` tokens a decode has processed so far.

    ``forward`` with a cache continues the sequence and extends the cache; the tensors are
    replaced, never written in place, so ``copy`` (sharing them) is cheap and safe."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[1])

    def copy(self) -> KVCache:
        return KVCache(self.keys, self.values)


def _attention(x: torch.Tensor, base: BaseWeights, adapter: Adapter | None, cache: KVCache) -> torch.Tensor:
    cfg = base.config
    seq, past = x.shape[0], cache.length

    def heads(t: torch.Tensor) -> torch.Tensor:  # (T, d) -> (H, T, head_dim)
        return t.view(seq, cfg.n_heads, cfg.head_dim).transpose(0, 1)

    q = heads(_linear(x, "attn.q", base, adapter))
    k = heads(_linear(x, "attn.k", base, adapter))
    v = heads(_linear(x, "attn.v", base, adapter))
    if cache.keys is not None and cache.values is not None:
        k, v = torch.cat([cache.keys, k], dim=1), torch.cat([cache.values, v], dim=1)
    cache.keys, cache.values = k, v
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)  # (H, T, past + T)
    future = torch.ones(seq, past + seq, dtype=torch.bool).triu(diagonal=past + 1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    mixed = (weights @ v).transpose(0, 1).reshape(seq, cfg.d_model)
    return _linear(mixed, "attn.o", base, adapter)


def forward(
    base: BaseWeights,
    tokens: Sequence[int] | torch.Tensor,
    adapter: Adapter | None,
    cache: KVCache | None = None,
) -> torch.Tensor:
    """Logits (T, V) in float64 for ``T >= 1`` token ids, row ``t`` predicting the token after
    ``tokens[t]``. Differentiable in the adapter's tensors; the base weights get no gradient.

    Without ``cache`` the tokens are a whole sequence. With one, they continue the sequence whose
    keys and values it holds (positions ``cache.length ..``), and the cache is extended: the
    decode loop feeds one token at a time. Both agree to rounding (about 1e-15)."""
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError("forward needs a non-empty 1-D sequence of token ids")
    cache = KVCache() if cache is None else cache
    start = cache.length
    if start + ids.numel() > base.config.max_context_length:
        raise ValueError(f"{start + ids.numel()} tokens exceed the context of {base.config.max_context_length}")
    x = base.tensors["embed"][ids] + base.tensors["pos"][start : start + ids.numel()]
    h = x + _attention(_norm(x), base, adapter, cache)
    hn = _norm(h)
    gated = torch.nn.functional.silu(_linear(hn, "mlp.gate", base, adapter)) * _linear(hn, "mlp.up", base, adapter)
    h = h + _linear(gated, "mlp.down", base, adapter)
    return _linear(_norm(h), "lm_head", base, adapter)
