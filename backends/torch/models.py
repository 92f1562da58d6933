"""Base models of the torch backend: built-in tiny models and Hugging Face causal LMs.

Any Hugging Face causal LM is served by name or local path through the real
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` path, **offline only**
(``local_files_only=True``): a name resolves to a local folder written by ``save_pretrained`` or to
a model already in the Hugging Face cache, never to a download.

Built-in models need no files at all. On first use each is built from a fixed recipe -- a
byte-level BPE tokenizer trained in-process with ``tokenizers`` on ``CORPUS`` (with ``<|endoftext|>``
as EOS and ``<|pad|>`` as pad token) and a config whose weights are drawn from a fixed seed -- then
written with ``save_pretrained`` into ``<cache>/models/<name>`` (``<cache>`` is
``$TINKER_STD_CACHE_DIR``, else ``~/.cache/tinker-std``; the folder appears atomically) and loaded
back through ``from_pretrained`` like any other model. The same recipe gives the same files in
every process on the same torch version.

| Name | Class | Layout |
|---|---|---|
| ``tiny-llama`` | ``LlamaForCausalLM`` | hidden 64, MLP 128, 2 layers, 4 heads, 2 KV heads, 256 positions, untied |
| ``tiny-qwen3`` | ``Qwen3ForCausalLM`` | the same with ``head_dim`` 16 (Qwen3's q/k norms) |
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinker_std.errors import NotFoundError

from .seeded_init import seeded_global_rng

__all__ = [
    "BUILTIN_MODELS",
    "CORPUS",
    "BuiltinRecipe",
    "builtin_path",
    "cache_root",
    "load_causal_lm",
    "load_tokenizer",
    "model_context_length",
    "quiet_transformers",
    "resolve_model_path",
    "train_tokenizer",
]

#: Bump when a recipe changes: cached folders with another version are rebuilt.
RECIPE_VERSION = 1
RECIPE_FILE = "tinker_std_recipe.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOKENIZER_VOCAB_TARGET = 384
WEIGHT_SEED = 20250101

#: The fixed training text of the built-in tokenizers (varied English, code and numbers, so
#: merges form for common words and the vocabulary reaches a few hundred entries).
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little model that learned to count: one, two, three, four, five.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "The answer is 42. The sum of 17 and 25 is 42, and 6 times 7 is also 42.",
    "Question: What colour is the sky? Answer: The sky is blue on a clear day.",
    "User: Write a short poem about the sea.\nAssistant: Waves roll in, the tide goes out, the gulls cry.",
    "Training a language model means predicting the next token from the tokens before it.",
    "A tokenizer splits text into tokens; a model maps tokens to a distribution over the next token.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "In 1969 the first people walked on the moon; in 2024 many people trained models on their laptops.",
    "import torch\nx = torch.zeros(3, 4)\ny = x.sum(dim=0)\n",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.",
    "January February March April May June July August September October November December",
    "The cat sat on the mat. The dog sat on the log. The bird sat in the tree.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 3.14 2.718",
)


@dataclass(frozen=True)
class BuiltinRecipe:
    """How to build one built-in model: its HF config class name and keyword arguments."""

    name: str
    config_class: str
    config: dict[str, Any]
    max_context_length: int = 256

    def describe(self) -> dict[str, Any]:
        """What identifies the built files (written to ``RECIPE_FILE``)."""
        return {
            "name": self.name,
            "recipe_version": RECIPE_VERSION,
            "config_class": self.config_class,
            "config": self.config,
            "tokenizer_vocab_target": TOKENIZER_VOCAB_TARGET,
            "weight_seed": WEIGHT_SEED,
            "torch": torch.__version__,
        }


_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    # Larger than the usual 0.02 so the random model has peaked, structured next-token
    # distributions (logit std ~1.5) rather than near-uniform ones.
    "initializer_range": 0.2,
}

#: The built-in models, in the order ``get_server_capabilities`` lists them.
BUILTIN_MODELS: dict[str, BuiltinRecipe] = {
    "tiny-llama": BuiltinRecipe("tiny-llama", "LlamaConfig", dict(_TINY)),
    "tiny-qwen3": BuiltinRecipe("tiny-qwen3", "Qwen3Config", {**_TINY, "head_dim": 16}),
}


def cache_root() -> Path:
    """``$TINKER_STD_CACHE_DIR``, else ``~/.cache/tinker-std``."""
    env = os.environ.get("TINKER_STD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tinker-std"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and known-harmless warnings for the duration."""
    from transformers.utils import logging as _hf_logging

    hf_logging: Any = _hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            # LoRA on a tied lm_head adapts the output projection only, as spec LORA-4 asks
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def train_tokenizer() -> Any:
    """The built-in byte-level BPE tokenizer (a ``PreTrainedTokenizerFast``), trained on ``CORPUS``.

    Deterministic: the same corpus and settings give the same vocabulary and merges. Byte-level, so
    every Unicode string round-trips through ``encode``/``decode``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast as _Fast

    fast: Any = _Fast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_TARGET,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    return fast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, bos_token=EOS_TOKEN)


def _build_builtin(recipe: BuiltinRecipe, folder: Path) -> None:
    """Write the tokenizer, config and seeded weights of ``recipe`` into ``folder``."""
    import transformers as _transformers

    transformers: Any = _transformers
    tokenizer = train_tokenizer()
    config_cls = getattr(transformers, recipe.config_class)
    config = config_cls(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **recipe.config,
    )
    with seeded_global_rng(WEIGHT_SEED):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with quiet_transformers():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / RECIPE_FILE).write_text(json.dumps(recipe.describe(), indent=2, sort_keys=True))


def builtin_path(name: str, root: Path | None = None) -> Path:
    """The local folder of built-in model ``name``, building it on first use (atomically).

    A folder whose recipe file does not match the current recipe is rebuilt. Concurrent builders
    are safe: each builds in its own temporary folder and the first rename wins.
    """
    recipe = BUILTIN_MODELS[name]
    models_dir = (root or cache_root()) / "models"
    final = models_dir / name
    wanted = recipe.describe()
    if _recipe_matches(final, wanted):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        _build_builtin(recipe, staging)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=models_dir))
            try:
                os.replace(final, trash / "old")
            except OSError:
                pass  # another process replaced it first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(staging, final)
        except OSError:
            if not _recipe_matches(final, wanted):  # lost a race to a builder of another recipe
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _recipe_matches(folder: Path, wanted: dict[str, Any]) -> bool:
    try:
        found: dict[str, Any] = json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found == wanted


def _not_found(name: str, served: list[str], cause: Exception | None = None) -> NotFoundError:
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return NotFoundError(
        f"base model {name!r} cannot be loaded offline{detail}. The torch backend serves the built-in "
        f"models and any Hugging Face causal LM available locally; served models: {served}. Pass a local "
        "path to a folder written by `save_pretrained` (with config.json, weights and tokenizer files), "
        "or download the model into the Hugging Face cache first (for example `hf download "
        f"{name}`); the backend itself never downloads."
    )


def resolve_model_path(name: str, served: list[str], root: Path | None = None) -> str:
    """A local path (or cached hub id) that ``from_pretrained`` can load offline for ``name``.

    Built-in names build their folder; a path to a folder is used as is; any other name must
    already be in the Hugging Face cache. Otherwise ``NotFoundError`` explaining how to provide a
    local path.
    """
    if name in BUILTIN_MODELS:
        return str(builtin_path(name, root))
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise _not_found(name, served, FileNotFoundError(f"no config.json in folder {name}"))
        return name
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "not available offline"
        raise _not_found(name, served, exc) from exc
    return name


def model_context_length(path: str, cap: int | None) -> int:
    """The maximum context length of the model at ``path``: its ``max_position_embeddings``
    (2048 when the config has none), lowered to ``cap`` when given."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    positions = getattr(config, "max_position_embeddings", None) or 2048
    return int(positions) if cap is None else min(int(positions), cap)


def load_tokenizer(path: str) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_causal_lm(path: str, dtype: torch.dtype, device: torch.device) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path, dtype=dtype)`` on ``device``, offline, in eval
    mode, with every base parameter frozen."""
    from transformers import AutoModelForCausalLM

    model: Any
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.to(device)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
