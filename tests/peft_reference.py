"""An independent reference for exported adapters: token logprobs of ``peft.PeftModel`` over a base
model folder, computed here with plain transformers + peft (no tinker-std code)."""

from __future__ import annotations

from pathlib import Path


def peft_logprobs(base_folder: str | Path, adapter_folder: str | Path, tokens: list[int]) -> list[float]:
    """``log p(tokens[i] | tokens[:i])`` for ``i >= 1`` under the base model with the adapter
    loaded by ``peft.PeftModel.from_pretrained`` (float32, CPU)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32, local_files_only=True)
    model = PeftModel.from_pretrained(base, str(adapter_folder)).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, :-1]
    picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[1:]).unsqueeze(-1)).squeeze(-1)
    return [float(x) for x in picked]
