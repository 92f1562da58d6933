"""``export_merged``: a training model's adapter merged into its base, as a full Hugging Face folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tinker_std.errors import ConflictError

from . import adapters
from .holdings import TrainingModel
from .models import load_causal_lm, quiet_transformers
from .precision import resolve_dtype
from .seeded_init import seeded_global_rng

__all__ = ["export_merged"]


def export_merged(model: TrainingModel, out_dir: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    """Write the base model with ``model``'s adapter merged in, as a full Hugging Face model
    folder (``save_pretrained`` weights + tokenizer) loadable by ``AutoModelForCausalLM``.

    The merge runs on a fresh float32 CPU copy of the base (``peft`` ``merge_and_unload``); the
    shared base model is not touched. ``dtype`` is the saved dtype (default float32).
    ``ConflictError`` if ``out_dir`` exists and is not empty. The folder appears atomically.
    """
    import peft

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConflictError(f"{out} exists and is not empty")
    save_dtype = resolve_dtype(dtype, torch.device("cpu"))
    copy = load_causal_lm(model.base.path, torch.float32, torch.device("cpu"))
    with seeded_global_rng(None), quiet_transformers():
        wrapped = peft.get_peft_model(copy, adapters.peft_config(model.spec.lora))
    target = adapters.adapter_params(wrapped.base_model.model, "default")
    if set(target) != set(model.params):
        raise RuntimeError(f"merge copy has adapter tensors {sorted(target)}, expected {sorted(model.params)}")
    with torch.no_grad():
        for name, param in model.params.items():
            target[name].copy_(param.detach().to("cpu", torch.float32))
    merged = wrapped.merge_and_unload()
    merged.to(save_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    with quiet_transformers():
        merged.save_pretrained(staging)
    model.base.tokenizer.save_pretrained(staging)
    if out.exists():
        out.rmdir()
    staging.replace(out)
    return out
