"""Row attention: each row of a decode batch attends as if it were alone (spec SMP-12).

SDPA splits its work by batch size, so a batched row's attention could round differently from the
same row alone, and left padding changes the shapes it attends over. ``rows_attend_alone`` makes
the model attend through ``row_attention`` instead, a transformers attention function (registered
under ``ROW_ATTENTION``) that runs each row over its own positions only. Which positions are a
row's own is passed explicitly with every forward call: the keyword argument ``ROW_PADS`` (per
row, its left padding; ``None`` for a filler row), which transformers hands from the model's
``forward`` down to every attention call. Used by ``decode.py`` on CPU with ``sdpa`` models
(``supports_row_attention``); elsewhere rows attend through a padding mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["ROW_ATTENTION", "ROW_PADS", "row_attention", "rows_attend_alone", "supports_row_attention"]

#: The name ``row_attention`` is registered under in transformers' ``AttentionInterface``.
ROW_ATTENTION = "tinker_std_rows"
#: The forward keyword argument carrying each batch row's left padding (``None``: a filler row).
ROW_PADS = "tinker_std_row_pads"


def row_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: batch row ``r`` attends as if alone over its own
    positions, from ``kwargs[ROW_PADS][r]`` on, with ``scaled_dot_product_attention`` (causal over
    a whole prompt, unmasked for one new token); filler rows (pad ``None``) get zeros. SDPA's work
    split depends on the batch size when it runs on several threads, so there each row is a batch
    of one; with one intra-op thread, where SDPA computes every (row, head) on its own the same way
    whatever the batch (measured: bit-equal, prompt and decode shapes), each run of consecutive rows
    with the same padding is one call. Either way a row's attention is independent of the rest of
    the batch and of its left padding."""
    pads: Sequence[int | None] = kwargs[ROW_PADS]
    _, heads, q_len, _ = query.shape
    if q_len != 1 and q_len != key.shape[2]:
        raise NotImplementedError("row attention runs whole prompts or one new token at a time")
    gqa = heads != key.shape[1]
    runs: list[tuple[int, int, int | None]] = []  # (start, stop, pad)
    together = torch.get_num_threads() == 1
    for r, pad in enumerate(pads):
        if together and runs and runs[-1][2] == pad:
            runs[-1] = (runs[-1][0], r + 1, pad)
        else:
            runs.append((r, r + 1, pad))
    rows = []
    for start, stop, pad in runs:
        if pad is None:
            rows.append(query.new_zeros((stop - start, q_len, heads, value.shape[-1])))
            continue
        first = pad if q_len > 1 else 0
        row = torch.nn.functional.scaled_dot_product_attention(
            query[start:stop, :, first:],
            key[start:stop, :, pad:],
            value[start:stop, :, pad:],
            scale=kwargs.get("scaling"),
            is_causal=q_len > 1,
            enable_gqa=gqa,
        ).transpose(1, 2)
        rows.append(torch.nn.functional.pad(row, (0, 0, 0, 0, first, 0)) if first else row)
    return (rows[0] if len(rows) == 1 else torch.cat(rows)).contiguous(), None


def supports_row_attention(model: Any) -> bool:
    """Plain causal full attention through ``sdpa`` (no sliding windows), looked up in transformers'
    attention interface, where ``row_attention`` computes exactly what the model would."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    can_set = getattr(model, "_can_set_attn_implementation", None)
    return (
        config._attn_implementation == "sdpa"
        and getattr(config, "sliding_window", None) is None
        and all(kind == "full_attention" for kind in layer_types)
        and callable(can_set)
        and bool(can_set())
    )


@contextmanager
def rows_attend_alone(model: Any) -> Iterator[None]:
    """Within: ``model`` attends through ``row_attention`` (then it builds no attention mask);
    every forward call must pass ``ROW_PADS``."""
    from transformers import AttentionInterface

    AttentionInterface.register(ROW_ATTENTION, row_attention)
    before = model.config._attn_implementation
    model.config._attn_implementation = ROW_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = before
