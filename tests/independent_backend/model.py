"""The model of the independent provider: a tiny two-layer transformer with its own LoRA.

Written from the spec only (spec/08-lora.md for the adapter): every adapted linear layer computes
``y = x·Wᵀ + (alpha / rank)·x·Aᵀ·Bᵀ`` with ``alpha = 32`` (LORA-1); a fresh adapter has ``B = 0``
and ``A ~ U(-1/√in, 1/√in)`` element-wise (LORA-2), drawn here with ``torch.rand`` from a generator
seeded by ``LoraConfig.seed`` (LORA-3). ``train_attn`` adapts q/k/v/o of every layer,
``train_mlp`` gate/up/down, ``train_unembed`` the output projection, which is tied to the input
embedding in this model (LORA-4: only the output side is adapted).

``dtype`` is the compute dtype of the forward pass (float32 or bfloat16). Adapter tensors are
always float32 master weights: in bfloat16 they are cast on use, so AdamW runs in float32 on both
variants, as mixed-precision trainers do.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tinker_std.types import LoraConfig

__all__ = ["MODEL_NAME", "VOCAB_SIZE", "CONTEXT", "EOS", "CharTokenizer", "Adapter", "logits_of", "LINEARS"]

MODEL_NAME = "independent/tiny-2l"
EOS = 0  # id 0 ends a sequence; ids 1..256 are the bytes 0..255; 257..299 are unused pieces
VOCAB_SIZE = 300
CONTEXT = 96
D_MODEL, N_HEADS, D_MLP, N_LAYERS = 32, 2, 48, 2
LORA_ALPHA = 32.0

#: Every linear layer: name -> (out_features, in_features). ``lm_head`` shares the embedding.
LINEARS: dict[str, tuple[int, int]] = {}
for _layer in range(N_LAYERS):
    for _proj in ("q", "k", "v", "o"):
        LINEARS[f"layers.{_layer}.attn.{_proj}"] = (D_MODEL, D_MODEL)
    LINEARS[f"layers.{_layer}.mlp.gate"] = (D_MLP, D_MODEL)
    LINEARS[f"layers.{_layer}.mlp.up"] = (D_MLP, D_MODEL)
    LINEARS[f"layers.{_layer}.mlp.down"] = (D_MODEL, D_MLP)
LINEARS["lm_head"] = (VOCAB_SIZE, D_MODEL)


def _family(layer: str) -> str:
    if layer == "lm_head":
        return "train_unembed"
    return "train_attn" if ".attn." in layer else "train_mlp"


class CharTokenizer:
    """Bytes shifted by one, ``<eos>`` at id 0; ids 257.. decode to nothing. Decoding never raises."""

    eos_token_id: int | None = EOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out = bytearray()
        for t in token_ids:
            if t == EOS:
                out += b"" if skip_special_tokens else b"<eos>"
            elif 1 <= t <= 256:
                out.append(t - 1)
        return out.decode("utf-8", errors="replace")


@functools.cache
def _base_fp32() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(20261205)
    w = {
        "embed": torch.randn(VOCAB_SIZE, D_MODEL, generator=gen),
        "pos": 0.5 * torch.randn(CONTEXT, D_MODEL, generator=gen),
    }
    for name, (out_f, in_f) in LINEARS.items():
        if name != "lm_head":
            w[name] = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)
    for layer in range(N_LAYERS):
        w[f"layers.{layer}.norm1"] = 1.0 + 0.1 * torch.randn(D_MODEL, generator=gen)
        w[f"layers.{layer}.norm2"] = 1.0 + 0.1 * torch.randn(D_MODEL, generator=gen)
    w["norm_f"] = 0.35 * torch.ones(D_MODEL)  # logits with std ~2: a spread distribution
    w["lm_head"] = w["embed"]  # tied: the unembedding is the embedding
    return w


@functools.cache
def base_weights(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The frozen base model in the compute dtype (identical in every process)."""
    return {k: v.to(dtype) for k, v in _base_fp32().items()}


@dataclass
class Adapter:
    """LoRA tensors ``<layer>.lora_A`` (rank, in) and ``<layer>.lora_B`` (out, rank), float32."""

    config: LoraConfig
    params: dict[str, torch.Tensor]

    @classmethod
    def fresh(cls, config: LoraConfig) -> Adapter:
        seed = config.seed % 2**63 if config.seed is not None else secrets.randbits(63)
        gen = torch.Generator().manual_seed(seed)
        params: dict[str, torch.Tensor] = {}
        for layer, (out_f, in_f) in LINEARS.items():
            if getattr(config, _family(layer)):
                bound = 1.0 / math.sqrt(in_f)
                a = (torch.rand(config.rank, in_f, generator=gen, dtype=torch.float64) * 2 - 1) * bound
                params[f"{layer}.lora_A"] = torch.nn.Parameter(a.float())
                params[f"{layer}.lora_B"] = torch.nn.Parameter(torch.zeros(out_f, config.rank))
        return cls(config, params)

    def copy(self, trainable: bool) -> Adapter:
        """A detached copy (a sampler's snapshot, a loaded checkpoint)."""
        wrap = torch.nn.Parameter if trainable else (lambda t: t)
        return Adapter(self.config, {n: wrap(p.detach().clone()) for n, p in self.params.items()})


def _rms(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * gain


def logits_of(tokens: Sequence[int], adapter: Adapter | None, dtype: torch.dtype, causal: bool = True) -> torch.Tensor:
    """Logits (T, V) in ``dtype``; row ``t`` predicts the token after ``tokens[t]`` and sees only
    ``tokens[0..t]`` (causal mask, ALN-2; ``causal=False`` exists for a mutant)."""
    w = base_weights(dtype)

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ w[name].T
        if adapter is not None and f"{name}.lora_A" in adapter.params:
            a = adapter.params[f"{name}.lora_A"].to(dtype)
            b = adapter.params[f"{name}.lora_B"].to(dtype)
            y = y + (LORA_ALPHA / adapter.config.rank) * ((x @ a.T) @ b.T)
        return y

    n = len(tokens)
    x = w["embed"][torch.as_tensor(list(tokens), dtype=torch.long)] + w["pos"][:n]
    mask = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1 if causal else n)
    head = D_MODEL // N_HEADS
    for layer in range(N_LAYERS):
        p = f"layers.{layer}"
        h = _rms(x, w[f"{p}.norm1"])
        q, k, v = (linear(f"{p}.attn.{s}", h).view(n, N_HEADS, head).transpose(0, 1) for s in "qkv")
        scores = (q @ k.transpose(1, 2)) / math.sqrt(head)
        attn = torch.softmax(scores.masked_fill(mask, -math.inf), dim=-1) @ v
        x = x + linear(f"{p}.attn.o", attn.transpose(0, 1).reshape(n, D_MODEL))
        h = _rms(x, w[f"{p}.norm2"])
        x = x + linear(f"{p}.mlp.down", torch.nn.functional.silu(linear(f"{p}.mlp.gate", h)) * linear(f"{p}.mlp.up", h))
    return linear("lm_head", _rms(x, w["norm_f"]))
