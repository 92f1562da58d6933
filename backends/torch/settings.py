"""``TorchSettings``: the torch engine's switches for its fast paths, read once.

Each fast path (``fast/README.md``) computes what the plain path computes (bit for bit, or within
the ``fp32`` class where its row says so); a switch turns one off, for a comparison or a platform
where it misbehaves. The switches are environment variables, read when an engine is built
(``TorchSettings.from_env``, the default of ``TorchEngine(settings=...)``) and then passed to the
code that needs them; nothing below the engine reads the environment.

=============================== ======================= ==============================================
variable                        field                   effect of ``0`` (default ``1``; adapters: 2)
=============================== ======================= ==============================================
``TINKER_STD_PACKED_WEIGHTS``   ``packed_weights``      frozen weights through MKL's ``linear``, not
                                                        oneDNN-packed copies (turns merging off too)
``TINKER_STD_FUSED_LORA``       ``fused_lora``          peft's LoRA forward in training passes
``TINKER_STD_FUSED_HEAD``       ``fused_head``          full-vocabulary logits for target logprobs
``TINKER_STD_SHARED_PREFIX``    ``shared_prefix``       right-padded rows instead of prefix trees
``TINKER_STD_MERGED_LORA``      ``merged_lora``         sampled adapters' factors computed apart
``TINKER_STD_MERGED_ADAPTERS``  ``merged_adapters``     how many adapters' merged weights stay cached
                                                        besides the batch's own (an int >= 0)
=============================== ======================= ==============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TorchSettings"]

_FLAGS = {
    "packed_weights": "TINKER_STD_PACKED_WEIGHTS",
    "fused_lora": "TINKER_STD_FUSED_LORA",
    "fused_head": "TINKER_STD_FUSED_HEAD",
    "shared_prefix": "TINKER_STD_SHARED_PREFIX",
    "merged_lora": "TINKER_STD_MERGED_LORA",
    "fused_decode": "TINKER_STD_FUSED_DECODE",
}
_MERGED_ADAPTERS = "TINKER_STD_MERGED_ADAPTERS"


@dataclass(frozen=True)
class TorchSettings:
    """Which fast paths the engine may take (see the module docstring for each)."""

    packed_weights: bool = True
    fused_lora: bool = True
    fused_head: bool = True
    shared_prefix: bool = True
    merged_lora: bool = True
    fused_decode: bool = True
    merged_adapters: int = 2

    def __post_init__(self) -> None:
        if self.merged_adapters < 0:
            raise ValueError(f"merged_adapters must be >= 0, got {self.merged_adapters}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TorchSettings:
        """The settings ``environ`` (default ``os.environ``) gives: a flag is off when its variable
        is ``0``, on otherwise; ``TINKER_STD_MERGED_ADAPTERS`` is an int (negative counts as 0)."""
        env = os.environ if environ is None else environ
        flags = {field: env.get(name, "1") != "0" for field, name in _FLAGS.items()}
        return cls(**flags, merged_adapters=max(0, int(env.get(_MERGED_ADAPTERS, "2"))))
