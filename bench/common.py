"""Shared helpers of the benchmark scripts: arguments, machine description, models, data, timing.

Every script measures a plain transformers + peft loop and the same work through tinker-std's
public API, side by side in one process, on the same model and data:

- ``--model tiny``: a smoke run on the torch backend's built-in ``tiny-llama`` (the plain loop
  loads the same files); timings there are mostly overhead;
- ``--model smollm2``: the real measurement, on ``tinker_std.models.ensure_smollm2()`` (the
  backend gets the converted folder's path).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

import tinker_std as ts

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecations inside peft

#: peft's "all-linear" for Llama: attention and MLP projections, not lm_head (tinker-std: train_unembed=False).
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = ("tiny", "smollm2")
ADAM = ts.AdamParams(learning_rate=1e-4)  # tinker's defaults: betas (0.9, 0.95), eps 1e-12, no decay, no clip


def parse_args(description: str, **defaults: int) -> argparse.Namespace:
    """``--model``, ``--backend``, ``--threads`` plus integer options given as ``name=default``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--backend", default="torch", help="tinker-std backend for the tinker-std side")
    parser.add_argument("--base-model", help="model name given to the backend (default: from --model)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    print_machine()
    args.base_model = args.base_model or base_model_name(args.model)
    return args


def base_model_name(model: str) -> str:
    """What the tinker-std side passes as ``base_model``: a built-in name or a local folder."""
    if model == "smollm2":
        from tinker_std.models import ensure_smollm2

        return str(ensure_smollm2())
    return "tiny-llama"


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """``AMD``, ``Intel`` or the raw vendor id: MKL takes different code paths on the two vendors,
    so a figure is only comparable with one measured on the same vendor (issue 23)."""
    vendor = _cpuinfo("vendor_id") or "unknown"
    return {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)


def cpu_family() -> str:
    """``family F model M`` from /proc/cpuinfo (e.g. AMD family 25 model 17: Zen 4), else empty."""
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"family {family} model {model}" if family and model else ""


def print_machine() -> None:
    import peft
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"# cpu: {cpu_model()} | vendor: {cpu_vendor()} {cpu_family()} | cores available: {cores} | "
        f"torch threads: {torch.get_num_threads()} | SIMD: {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"# python {platform.python_version()} | torch {torch.__version__} | transformers "
        f"{transformers.__version__} | peft {peft.__version__} | tinker-std {ts.__version__}"
    )


# -- tinker-std side -----------------------------------------------------------------------------


def open_service(backend: str) -> ts.ServiceClient | None:
    """A ServiceClient on ``backend``, or None (with a note) when that backend is not installed."""
    try:
        return ts.ServiceClient(backend=backend)
    except ts.TinkerError as exc:
        print(f"# tinker-std backend {backend!r} unavailable ({exc}); measuring the plain loop only")
        return None


def training_client(svc: ts.ServiceClient, base_model: str, rank: int) -> ts.TrainingClient:
    return svc.create_lora_training_client(base_model, rank=rank, seed=0, train_unembed=False).result()


def datums(tokens: torch.Tensor) -> list[ts.Datum]:
    """Cross-entropy datums: row ``[t0..tn]`` -> input ``[t0..tn-1]``, targets ``[t1..tn]``."""
    rows = tokens.tolist()
    return [
        ts.Datum(
            model_input=ts.ModelInput.from_ints(row[:-1]),
            loss_fn_inputs={"target_tokens": row[1:], "weights": [1.0] * (len(row) - 1)},
        )
        for row in rows
    ]


# -- plain side ----------------------------------------------------------------------------------


def plain_model(model: str, vocab_size: int | None = None) -> PreTrainedModel:
    """The base model for the plain loop (fp32, no LoRA yet): the same files the backend loads."""
    if model == "smollm2":
        from tinker_std.models import ensure_smollm2

        return AutoModelForCausalLM.from_pretrained(ensure_smollm2(), dtype=torch.float32)
    try:
        from tinker_std.backends.torch.models import builtin_path

        return AutoModelForCausalLM.from_pretrained(builtin_path("tiny-llama"), dtype=torch.float32)
    except ImportError:  # no torch backend: a tiny Llama of the same layout
        pass
    config = LlamaConfig(
        vocab_size=vocab_size or 512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def add_lora(model: PreTrainedModel | PeftModel, rank: int, name: str = "default") -> PeftModel:
    config = LoraConfig(r=rank, lora_alpha=32, lora_dropout=0.0, target_modules=TARGET_MODULES)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        return model
    return get_peft_model(model, config, adapter_name=name)


def adamw(params: Sequence[torch.nn.Parameter]) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params, lr=ADAM.learning_rate, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps, weight_decay=ADAM.weight_decay
    )


def plain_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    """One forward_backward (summed cross-entropy, as tinker-std) plus one AdamW step."""
    logits = model(input_ids=tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="sum")
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# -- data, timing, memory -------------------------------------------------------------------------


def random_tokens(rows: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """``rows`` x ``length`` token ids (seeded); pass ``length = n + 1`` for n training positions."""
    return torch.randint(0, vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, steps: int) -> dict[str, list[float]]:
    """Run every function ``warmup`` times, then ``steps`` timed times, alternating between them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def summary(times: Sequence[float]) -> str:
    spread = f" (min {min(times):.4f}, max {max(times):.4f}, n={len(times)})" if len(times) > 1 else ""
    return f"median {statistics.median(times):.4f} s{spread}"


def ratio(slow: Sequence[float], fast: Sequence[float]) -> str:
    """``slow / fast`` of medians, and of minima (the least disturbed runs on a busy machine)."""
    return f"{statistics.median(slow) / statistics.median(fast):.3f} (medians), {min(slow) / min(fast):.3f} (minima)"


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB: /proc/self/status, else psutil."""
    current, peak = _proc_status("VmRSS"), _proc_status("VmHWM")
    if not current:
        try:
            import psutil  # optional, never a dependency

            current = float(psutil.Process().memory_info().rss)
        except ImportError:
            pass
    return current / 2**20, (peak or current) / 2**20


def _proc_status(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0
