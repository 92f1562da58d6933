"""A decode step for Llama and Qwen3 decoders outside transformers' per-layer Python.

A decode step of the sampler (``decode.py``: every live row one new token, rows attending alone)
through transformers' modules runs, per layer and step, the decorators, keyword plumbing, attention
dispatch and cache bookkeeping of four nested modules; on SmolLM2 (30 layers) at 8 rows that is a
measurable part of a step whose products take ~55 ms. ``fused_step(model)`` returns a
``FusedStep`` that computes the same step from the same modules' tensors with the same tensor
operations, in the same order, as ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` (RMSNorm, rotary
embedding, grouped-query attention through ``row_attention.row_attention``, SiLU MLP, final norm,
output layer), so its logits are bit-identical to the plain path's.

What it reads is what the plain path reads: every linear layer (base, peft LoRA, lm_head) computes
as the module would, so the swapped forwards of ``packed.py``, ``merged.py``, ``direct_lora.py`` and
the hooks of ``per_row.py`` apply unchanged: a layer with hooks of its own is called as a module,
one without through its (swapped) ``forward`` directly (``Module.__call__`` would only look for
hooks), and where ``merged.py`` computes q/k/v or gate/up as columns of one joint product
(``merged.joint_columns``) the step computes that product once and slices it, as the layers' memo
would. The rotary embedding is the model's own module; keys and values go through the cache's own
layers (``kv_cache.py``). Only the glue between them (norms, rotary arithmetic, reshapes, residual
adds) is computed here, with the operations transformers uses.

It applies (``fused_step`` returns a step, else ``None`` and the loop calls the model) to exactly
``LlamaForCausalLM`` and ``Qwen3ForCausalLM`` (under a peft wrapper or not) whose decoder layers,
attention, MLP and norms are the stock classes with a SiLU MLP, no forward hooks on any module this
step bypasses, and a plain ``nn.Embedding`` input layer; Qwen3-MoE and every other architecture keep
the plain path. ``TorchSettings.fused_decode`` (``TINKER_STD_FUSED_DECODE=0``) turns it off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..row_attention import ROW_PADS, row_attention
from . import merged, packed

__all__ = ["FusedStep", "fused_step"]


@dataclass(frozen=True)
class _Norm:
    """An RMSNorm's weight and epsilon (``LlamaRMSNorm`` / ``Qwen3RMSNorm``)."""

    weight: torch.Tensor
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # LlamaRMSNorm.forward for float32 ``x`` (its ``.to`` calls are no-ops there), in place on
        # this call's own temporaries: ``weight * y`` is ``y * weight`` bit for bit
        variance = x.pow(2).mean(-1, keepdim=True)
        return (x * variance.add_(self.eps).rsqrt_()).mul_(self.weight)


@dataclass(frozen=True)
class _Joint:
    """One product whose columns ``slices[i]`` are what sibling layer ``i`` computes (``merged.py``)."""

    product: Callable[[torch.Tensor], torch.Tensor]
    slices: tuple[tuple[int, int], ...]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = packed.apply_rows(self.product, x)
        return [out[..., start:stop] for start, stop in self.slices]


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's modules and shapes, looked up once."""

    input_norm: _Norm
    post_norm: _Norm
    attention: Any  # the attention module (``row_attention`` reads nothing from it; kept as its argument)
    q_proj: Any
    k_proj: Any
    v_proj: Any
    o_proj: Any
    q_norm: _Norm | None
    k_norm: _Norm | None
    gate_proj: Any
    up_proj: Any
    down_proj: Any
    head_dim: int
    scaling: float
    #: q/k/v and gate/up as columns of one joint product (``merged.joint_columns``), or ``None``
    qkv: _Joint | None = None
    gate_up: _Joint | None = None


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: ``rotate_half(x) * sin == x.roll(half, -1) * signed``
    bit for bit (``(-a) * b == a * (-b)`` exactly), one negation per step instead of per layer."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class FusedStep:
    """``step(input_ids, position_ids, cache, pads)``: the logits ``(rows, vocab)`` of one decode
    step, bit-identical to ``model(input_ids=..., position_ids=..., past_key_values=cache,
    use_cache=True, tinker_std_row_pads=pads).logits[:, -1]`` under ``row_attention``.

    ``input_ids`` and ``position_ids``: ``(rows, 1)``; ``cache``: the loop's cache (its layers are
    updated in place, as the model's forward would); ``pads``: each row's left padding (``None``:
    a filler row), as ``row_attention`` takes them."""

    def __init__(self, lm: Any, layers: Sequence[_Layer]) -> None:
        self._embed = lm.model.embed_tokens
        self._rotary = lm.model.rotary_emb
        self._norm = _norm(lm.model.norm)
        self._head = _direct(lm.lm_head)
        self._layers = list(layers)

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Any, pads: Sequence[int | None]
    ) -> torch.Tensor:
        hidden = self._embed(input_ids)  # (rows, 1, hidden)
        cos, sin = self._rotary(hidden, position_ids)
        cos, sin = cos.unsqueeze(1), _signed_sin(sin.unsqueeze(1))  # apply_rotary_pos_emb's unsqueeze_dim=1
        half = cos.shape[-1] // 2
        rows = hidden.shape[0]
        attention_kwargs = {ROW_PADS: pads}
        for index, layer in enumerate(self._layers):
            residual = hidden
            x = layer.input_norm(hidden)
            shape = (rows, 1, -1, layer.head_dim)
            if layer.qkv is not None:
                q_out, k_out, v_out = layer.qkv(x)
            else:
                q_out, k_out, v_out = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
            q, k = q_out.view(shape), k_out.view(shape)
            if layer.q_norm is not None and layer.k_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = v_out.view(shape).transpose(1, 2)
            # apply_rotary_pos_emb: x * cos + rotate_half(x) * sin
            q = (q * cos) + (q.roll(half, -1) * sin)
            k = (k * cos) + (k.roll(half, -1) * sin)
            keys, values = cache.layers[index].update(k, v)
            out, _ = row_attention(layer.attention, q, keys, values, None, scaling=layer.scaling, **attention_kwargs)
            hidden = residual + layer.o_proj(out.reshape(rows, 1, -1).contiguous())
            residual = hidden
            x = layer.post_norm(hidden)
            gate, up = layer.gate_up(x) if layer.gate_up is not None else (layer.gate_proj(x), layer.up_proj(x))
            x = layer.down_proj(torch.nn.functional.silu(gate) * up)
            hidden = residual + x
        logits: torch.Tensor = self._head(self._norm(hidden))
        return logits[:, -1]


def _norm(module: Any) -> _Norm:
    return _Norm(module.weight, float(module.variance_epsilon))


def _families() -> dict[Any, tuple[Any, Any, Any, Any, Any]]:
    """Each supported causal LM class: its (decoder layer, attention, MLP, RMSNorm, rotary) classes."""
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.qwen3 import modeling_qwen3 as qwen3

    return {
        llama.LlamaForCausalLM: (
            llama.LlamaDecoderLayer,
            llama.LlamaAttention,
            llama.LlamaMLP,
            llama.LlamaRMSNorm,
            llama.LlamaRotaryEmbedding,
        ),
        qwen3.Qwen3ForCausalLM: (
            qwen3.Qwen3DecoderLayer,
            qwen3.Qwen3Attention,
            qwen3.Qwen3MLP,
            qwen3.Qwen3RMSNorm,
            qwen3.Qwen3RotaryEmbedding,
        ),
    }


def _causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (``model`` itself when there is none)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _unhooked(*modules: Any) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks) for m in modules
    )


def _direct(module: Any) -> Any:
    """What calling ``module`` runs: its (possibly swapped) ``forward`` itself when no hook of its
    own would run around it (global hooks are refused in ``fused_step``), else the module."""
    return module.forward if _unhooked(module) else module


def _joint(modules: Sequence[Any]) -> _Joint | None:
    """The joint product ``modules`` (siblings called on one input) compute as columns of, when
    each is unhooked and its forward is such a column slice of one and the same product
    (``merged.joint_columns``: one adapter's merged weights in a batch of that adapter only)."""
    found = [merged.joint_columns(m.__dict__.get("forward")) if _unhooked(m) else None for m in modules]
    if any(f is None for f in found) or len({id(f[0]) for f in found if f is not None}) != 1:
        return None
    columns = [f for f in found if f is not None]
    return _Joint(columns[0][0], tuple((start, stop) for _, start, stop in columns))


def _silu(mlp: Any) -> bool:
    from transformers.activations import SiLUActivation

    return type(mlp.act_fn) in (SiLUActivation, torch.nn.SiLU)


def fused_step(model: Any) -> FusedStep | None:
    """The fused decode step of ``model`` (a Llama or Qwen3 causal LM, possibly peft-wrapped, in
    float32), or ``None`` when the model is another architecture or differs from the stock layout
    in any way this step would not reproduce (see the module docstring)."""
    from torch.nn.modules import module as nn_module

    lm = _causal_lm(model)
    classes = _families().get(type(lm))
    if classes is None:
        return None
    layer_cls, attention_cls, mlp_cls, norm_cls, rotary_cls = classes
    body = lm.model
    config = lm.config
    if (
        nn_module._global_forward_hooks
        or nn_module._global_forward_pre_hooks
        or type(body.embed_tokens) is not torch.nn.Embedding
        or type(body.norm) is not norm_cls
        or type(body.rotary_emb) is not rotary_cls
        or getattr(config, "pretraining_tp", 1) != 1
        or not _unhooked(model, lm, body, body.embed_tokens, body.norm, body.rotary_emb)
        or body.embed_tokens.weight.dtype != torch.float32
    ):
        return None
    layers: list[_Layer] = []
    for layer in body.layers:
        attention, mlp = layer.self_attn, layer.mlp
        if not (
            type(layer) is layer_cls
            and type(attention) is attention_cls
            and type(mlp) is mlp_cls
            and type(layer.input_layernorm) is norm_cls
            and type(layer.post_attention_layernorm) is norm_cls
            and _silu(mlp)
            and getattr(attention, "sliding_window", None) is None
            and _unhooked(layer, attention, mlp, layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn)
        ):
            return None
        q_norm = getattr(attention, "q_norm", None)
        k_norm = getattr(attention, "k_norm", None)
        qk_norms = (q_norm, k_norm)
        if q_norm is not None or k_norm is not None:
            if not (type(q_norm) is norm_cls and type(k_norm) is norm_cls and _unhooked(*qk_norms)):
                return None
        qkv = (attention.q_proj, attention.k_proj, attention.v_proj)
        linears = [*qkv, attention.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj = (_direct(m) for m in linears)
        layers.append(
            _Layer(
                input_norm=_norm(layer.input_layernorm),
                post_norm=_norm(layer.post_attention_layernorm),
                attention=attention,
                q_proj=q_proj,
                k_proj=k_proj,
                v_proj=v_proj,
                o_proj=o_proj,
                q_norm=None if q_norm is None else _norm(q_norm),
                k_norm=None if k_norm is None else _norm(k_norm),
                gate_proj=gate_proj,
                up_proj=up_proj,
                down_proj=down_proj,
                head_dim=int(attention.head_dim),
                scaling=float(attention.scaling),
                qkv=_joint(qkv),
                gate_up=_joint((mlp.gate_proj, mlp.up_proj)),
            )
        )
    return FusedStep(lm, layers)
