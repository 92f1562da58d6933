"""``ForwardPass``: target logprobs of a batch of datums from one forward pass over a base model.

How the engine lays out and runs a ``forward_backward`` pass (spec FB), whichever client or
clients it serves: datums are checked against the context (``check_lengths``), cut into
micro-batches within the token and logit budgets (``micro_batches``), laid out as rows
(``layout``: prefix trees when they share prefixes and the model allows, else right-padded) and
run through the decoder (``logprobs``), the output layer in row chunks where ``fast/head.py``
applies, else on the model's full logits. The frozen weights compute from packed copies and one
adapter's LoRA layers as fused products where the settings allow (``fast/README.md``); every
layout and path gives the same numbers within float32 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tinker_std.backend import ModelSpec
from tinker_std.errors import BadRequestError, ContextLengthError
from tinker_std.training_math import target_logprobs
from tinker_std.types import Datum

from .fast import head, lora_linear, packed, prefix_layout
from .holdings import LoadedBase
from .settings import TorchSettings

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "MAX_LOGIT_ELEMENTS", "ForwardPass"]

#: Padded tokens (batch x longest datum) per forward pass of ``forward_backward``.
DEFAULT_MAX_BATCH_TOKENS = 16384
#: Logit elements (padded tokens x vocabulary) per forward pass: 2**28 float32 logits are 1 GiB.
MAX_LOGIT_ELEMENTS = 2**28


class ForwardPass:
    """One engine's forward passes: ``device``, ``settings`` (the fast paths it may take) and
    ``max_batch_tokens`` (padded tokens per pass)."""

    def __init__(self, device: torch.device, settings: TorchSettings, max_batch_tokens: int) -> None:
        self.device = device
        self.settings = settings
        self.max_batch_tokens = max_batch_tokens

    @staticmethod
    def check_lengths(spec: ModelSpec, data: Sequence[Datum]) -> None:
        """``ContextLengthError`` / ``BadRequestError`` naming the first datum that is longer than
        the model's context or empty."""
        for i, datum in enumerate(data):
            length = datum.model_input.length
            if length > spec.max_context_length:
                raise ContextLengthError(
                    f"data[{i}].model_input",
                    f"{length} tokens exceed the context of {spec.max_context_length}",
                )
            if length == 0:
                raise BadRequestError(f"data[{i}].model_input", "must hold at least one token")

    def token_budget(self, vocab_size: int) -> int:
        """Padded tokens per forward pass: ``max_batch_tokens``, and logits within ``MAX_LOGIT_ELEMENTS``."""
        return max(1, min(self.max_batch_tokens, MAX_LOGIT_ELEMENTS // max(vocab_size, 1)))

    def micro_batches(self, data: Sequence[Datum], vocab_size: int) -> list[list[Datum]]:
        """Consecutive groups whose padded size (count x longest) stays within ``max_batch_tokens``
        and whose logits stay within ``MAX_LOGIT_ELEMENTS``; a single datum is never split."""
        budget = self.token_budget(vocab_size)
        chunks: list[list[Datum]] = []
        current: list[Datum] = []
        longest = 0
        for datum in data:
            length = datum.model_input.length
            if current and (len(current) + 1) * max(longest, length) > budget:
                chunks.append(current)
                current, longest = [], 0
            current.append(datum)
            longest = max(longest, length)
        if current:
            chunks.append(current)
        return chunks

    def layout(self, base: LoadedBase, batch: Sequence[Datum]) -> prefix_layout.RowLayout:
        """How one request's datums are laid out as rows: as prefix trees when they share
        prefixes and the model allows (``shares_prefixes``), else right-padded."""
        sequences = [d.model_input.to_ints() for d in batch]
        shared = prefix_layout.plan(sequences) if self.shares_prefixes(base.model) else None
        return shared if shared is not None else prefix_layout.plain(sequences)

    def shares_prefixes(self, model: Any) -> bool:
        """Whether a request's datums may be laid out as prefix trees (``prefix_layout.plan``):
        a decoder known to take a prepared 4D mask with position ids and attend over it as given
        (no sliding window), with SDPA or eager attention; ``TorchSettings.shared_prefix``
        (``TINKER_STD_SHARED_PREFIX=0``) turns it off."""
        if not self.settings.shared_prefix:
            return False
        config = model.config
        window = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
        known = any(cls.__name__ in head.FUSABLE_ARCHITECTURES for cls in type(model).__mro__)  # FSDP subclasses
        return known and not window and config._attn_implementation in ("sdpa", "eager")

    def logprobs(
        self,
        base: LoadedBase,
        batch: Sequence[Datum],
        layout: prefix_layout.RowLayout,
        datum_adapters: Sequence[str | None],
        gradient_rows: Sequence[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """Target logprobs of each datum ((N,) or (N, K), float32 on CPU, differentiable), from
        one forward pass over ``layout`` (``layout``, or several requests' layouts stacked).
        ``datum_adapters``: the adapter each datum goes through (already active, or installed
        per row by ``per_row.per_row_adapters``); ``gradient_rows``: per datum, the positions
        that may get a gradient (``losses.gradient_positions``; a hint for ``head.py``).

        Where ``head.output_head`` splits the model, the decoder's hidden states go through the
        output layer in row chunks (``head.batch_target_logprobs``: no full-vocabulary logits);
        else the model's own logits are used (``tinker_std.training_math.target_logprobs``). Every
        layout and path gives the same numbers within float32 rounding."""
        settings = self.settings
        additive = base.model.config._attn_implementation == "eager"
        inputs: dict[str, Any] = {
            k: v.to(self.device) for k, v in layout.decoder_inputs(additive, base.model.dtype).items()
        }
        inputs["use_cache"] = False
        split = head.output_head(base.model, settings.packed_weights) if settings.fused_head else None
        # one adapter: its LoRA layers as fused products; the multi-tenant pass computes each
        # client's rows the same way (``per_row_adapters(fused=True)``), so either path gives a
        # request the same bits
        single = datum_adapters[0] if len(set(datum_adapters)) == 1 and settings.fused_lora else None
        with (
            packed.packed_linears(base.model, enabled=settings.packed_weights),  # frozen weights from packed copies
            lora_linear.fused_lora_linears(base.model, single, settings.packed_weights),  # one adapter, fused
        ):
            if split is not None:
                hidden = split.decoder(**inputs).last_hidden_state
            else:
                logits = base.model(**inputs).logits
        targets = [d.loss_fn_inputs["target_tokens"].to_torch().long().to(self.device) for d in batch]
        positions = layout.positions
        if split is not None:
            states = hidden.reshape(-1, hidden.shape[-1])
            out = head.batch_target_logprobs(split, states, positions, targets, datum_adapters, gradient_rows)
        else:
            flat = logits.reshape(-1, logits.shape[-1])
            out = [target_logprobs(flat[p].float(), t) for p, t in zip(positions, targets, strict=True)]
        return [lp.to("cpu") for lp in out]
