"""The ``torch`` backend: real Hugging Face causal LMs, LoRA through ``peft``, on CPU or GPU.

Entry point ``tinker_std.backends.torch:TorchBackend``. Needs the ``hf`` extra
(``pip install "tinker-std[hf]"``: transformers, peft, accelerate, safetensors). How it is built
and where other backends reuse it: ``backends/README.md``. Modules, one job each:

* ``backend`` -- ``TorchBackend``, the asyncio ``tinker_std.backend.Backend`` over an engine
  (transport only), and its precision variants;
* ``engine_protocol`` -- ``Engine``, the calls ``TorchBackend`` drives (the seam fsdp plugs into);
* ``scheduler`` -- ``EngineQueue``: engine calls one at a time, concurrent requests handed over together;
* ``engine`` -- ``TorchEngine``, the synchronous core: training models, samplers, checkpoints;
* ``holdings`` -- what the engine holds: loaded base models, training models, samplers;
* ``precision`` -- device and dtype defaults, and the precision a backend declares for them;
* ``settings`` -- ``TorchSettings``: the fast paths' switches (``TINKER_STD_*``), read once;
* ``forward_pass`` -- target logprobs of a batch from one forward pass (layout, micro-batches);
* ``multi_tenant`` -- several clients' ``forward_backward`` requests as one pass;
* ``batching`` -- ``PathChooser``: whether the multi-tenant pass or one pass per client is faster;
* ``export`` -- a training model merged into its base as a full Hugging Face folder;
* ``sampler`` -- sampling requests batched on one base model, the model arranged for their adapters;
* ``decode`` -- the KV-cached decode loop (semantics from ``tinker_std.sampling_rules``);
* ``row_attention`` -- each decode row attends alone (batch invariance, SMP-12);
* ``adapters`` -- many named peft LoRA adapters on one base model, activation and isolation;
* ``storage`` -- checkpoint files (standard peft adapter folder + AdamW state);
* ``offload`` -- idle training models' adapter and AdamW state in files;
* ``placement`` -- where the work runs: one process here, one rank per process under fsdp;
* ``models`` -- built-in tiny models (``tiny-llama``, ``tiny-qwen3``, built offline on first use)
  and offline loading of any Hugging Face causal LM by name or local path;
* ``environment`` -- the installed transformers / peft versions checked to work together;
* ``fast`` -- the fast paths (packed weights, fused LoRA, merged sampling weights, chunked output
  head, shared prefixes, ...), each with its switch and test: ``fast/README.md``.
"""

from .adapters import LORA_ALPHA, TARGET_GROUPS
from .backend import TorchBackend, TorchBackendBF16, TorchBackendFP32
from .engine import TorchEngine
from .engine_protocol import Engine
from .models import BUILTIN_MODELS, builtin_path, cache_root, train_tokenizer
from .settings import TorchSettings

__all__ = [
    "BUILTIN_MODELS",
    "LORA_ALPHA",
    "TARGET_GROUPS",
    "Engine",
    "TorchBackend",
    "TorchBackendBF16",
    "TorchBackendFP32",
    "TorchEngine",
    "TorchSettings",
    "builtin_path",
    "cache_root",
    "train_tokenizer",
]
