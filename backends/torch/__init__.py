"""The ``torch`` backend: real Hugging Face causal LMs, LoRA through ``peft``, on CPU or GPU.

Entry point ``tinker_std.backends.torch:TorchBackend``. Needs the ``hf`` extra
(``pip install "tinker-std[hf]"``: transformers, peft, accelerate, safetensors). Modules, one job each:

* ``models`` -- built-in tiny models (``tiny-llama``, ``tiny-qwen3``, built offline on first use)
  and offline loading of any Hugging Face causal LM by name or local path;
* ``adapters`` -- many named peft LoRA adapters on one base model, activation and isolation;
* ``sampler`` -- the batched, KV-cached decode loop (semantics from ``tinker_std.sampling_rules``);
* ``storage`` -- checkpoint files (standard peft adapter folder + AdamW state);
* ``head`` -- target logprobs from hidden states in row chunks (no full-vocabulary logits);
* ``lora_linear`` -- the trained adapter's LoRA layers as fused products;
* ``offload`` -- idle training models' adapter and AdamW state in files;
* ``engine`` -- ``TorchEngine``, the synchronous core any transport can drive;
* ``backend`` -- ``TorchBackend``, the asyncio ``tinker_std.backend.Backend`` over the engine.
"""

from .adapters import LORA_ALPHA, TARGET_GROUPS
from .backend import TorchBackend, TorchBackendBF16, TorchBackendFP32
from .engine import TorchEngine
from .models import BUILTIN_MODELS, builtin_path, cache_root, train_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "LORA_ALPHA",
    "TARGET_GROUPS",
    "TorchBackend",
    "TorchBackendBF16",
    "TorchBackendFP32",
    "TorchEngine",
    "builtin_path",
    "cache_root",
    "train_tokenizer",
]
