"""``Datum``: one training example (field-compatible with tinker 0.38)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import field_validator

from ._base import RequestModel
from .model_input import ModelInput
from .tensor_data import TensorData, TensorDtype

__all__ = ["Datum", "LOSS_INPUT_DTYPES"]

#: The dtype a plain Python list is given, per ``loss_fn_inputs`` key (as in the tinker SDK).
LOSS_INPUT_DTYPES: dict[str, TensorDtype] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}


def _to_tensor_data(key: str, value: Any) -> TensorData:
    if isinstance(value, TensorData):
        return value
    if isinstance(value, dict):
        return TensorData.model_validate(value)
    if isinstance(value, np.ndarray):
        return TensorData.from_numpy(value)
    if type(value).__module__.startswith("torch"):
        return TensorData.from_torch(value)
    if isinstance(value, (list, tuple)):
        if key not in LOSS_INPUT_DTYPES:
            raise ValueError(
                f"loss_fn_inputs[{key!r}] is a plain list and its dtype cannot be inferred; "
                "pass TensorData, a numpy array or a torch tensor"
            )
        try:
            array = np.asarray(value, dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"loss_fn_inputs[{key!r}] must be a rectangular numeric array") from exc
        return TensorData(data=array.reshape(-1).tolist(), dtype=LOSS_INPUT_DTYPES[key], shape=list(array.shape))
    raise ValueError(f"loss_fn_inputs[{key!r}] has unsupported type {type(value).__name__}")


class Datum(RequestModel):
    """A model input plus the per-position tensors a loss function reads.

    ``loss_fn_inputs`` values may be given as ``TensorData``, numpy arrays, torch tensors or
    (for the well-known keys in ``LOSS_INPUT_DTYPES``) plain lists; they are converted on
    construction. Each per-position tensor has ``model_input.length`` rows (spec ALN-1).
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = {}

    @field_validator("loss_fn_inputs", mode="before")
    @classmethod
    def _coerce_inputs(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(key): _to_tensor_data(str(key), item) for key, item in value.items()}
