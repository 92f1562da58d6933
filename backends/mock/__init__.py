"""The ``mock`` backend: deterministic, in-process, tiny float64 models with LoRA.

Entry point ``tinker_std.backends.mock:MockBackend``. Modules, one job each:

* ``tokenizer`` -- ``ByteTokenizer`` (UTF-8 bytes + ``<|eos|>`` + ``<|pad|>``);
* ``model`` -- model configs, deterministic base weights, the forward pass;
* ``lora`` -- ``LoraAdapter`` (per training model / sampler adapter tensors);
* ``sampler`` -- the decode loop and the sampling semantics;
* ``storage`` -- checkpoint files (adapter weights, AdamW state);
* ``backend`` -- ``MockBackend``, the ``tinker_std.backend.Backend`` implementation.
"""

from .backend import MockBackend
from .lora import LORA_ALPHA, LoraAdapter
from .model import MODELS, BaseWeights, ModelConfig, base_weights, forward
from .tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE, ByteTokenizer

__all__ = [
    "EOS_TOKEN_ID",
    "LORA_ALPHA",
    "MODELS",
    "PAD_TOKEN_ID",
    "VOCAB_SIZE",
    "BaseWeights",
    "ByteTokenizer",
    "LoraAdapter",
    "MockBackend",
    "ModelConfig",
    "base_weights",
    "forward",
]
