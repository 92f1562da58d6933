"""Which device and dtype the torch engine computes in, and the precision a backend declares for them.

``resolve_device`` and ``resolve_dtype`` turn the ``device`` / ``dtype`` options of ``TorchEngine``
(and every backend over it) into torch objects with the documented defaults; ``precision_of`` maps
them to the ``tinker_std.capabilities.Precision`` whose capabilities the backend declares (CAP-1,
TOL: float32 on CPU replays bit for bit, other float32 meets the ``fp32`` class, half precisions
the ``bf16`` class).
"""

from __future__ import annotations

import torch

from tinker_std.capabilities import Precision

__all__ = ["precision_of", "resolve_device", "resolve_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, else ``cuda`` when available, else ``cpu``."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` (a ``torch.dtype`` or a name such as ``"bfloat16"``), else float32 on CPU and
    bfloat16 elsewhere."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def precision_of(device: str | torch.device | None, dtype: str | torch.dtype | None) -> Precision:
    """The capability variant a backend on the torch engine declares for these options:
    ``"bf16"`` (bfloat16 or float16), ``"fp32"`` (float32 off the CPU: fp32 class, no bit-exact
    replay) or ``"cpu"`` (float32 on the CPU: fp32 class and deterministic)."""
    resolved = resolve_device(device)
    if resolve_dtype(dtype, resolved) in (torch.bfloat16, torch.float16):
        return "bf16"
    return "cpu" if resolved.type == "cpu" else "fp32"
