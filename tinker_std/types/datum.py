"""``Datum``: one training example (field-compatible with tinker 0.38)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
from pydantic import field_validator, model_validator

from ._base import RequestModel
from .model_input import ModelInput
from .provenance import ProvenanceSpans
from .tensor_data import TensorData, TensorDtype

if TYPE_CHECKING:
    import torch

__all__ = ["Datum", "LOSS_INPUT_DTYPES", "TensorLike"]

#: What ``Datum(loss_fn_inputs=...)`` accepts per key and converts to ``TensorData`` (spec TYP-7):
#: ``TensorData`` or its field dict, a numpy array, a torch tensor, or a plain (possibly nested,
#: rectangular) list or tuple of numbers; a plain list only under a key of ``LOSS_INPUT_DTYPES``.
TensorLike: TypeAlias = "TensorData | dict[str, Any] | npt.NDArray[Any] | torch.Tensor | list[Any] | tuple[Any, ...]"

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

    ``model_input_spans`` / ``loss_fn_input_spans`` (set both or neither; ``with_provenance``)
    say which sampled sequence each position came from; ``stable_reinforce`` requires them and
    every other loss refuses them (spec LOSS-17).
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = {}
    model_input_spans: ProvenanceSpans | None = None
    loss_fn_input_spans: ProvenanceSpans | None = None

    if TYPE_CHECKING:
        # The fields' types are what construction yields; these are what it accepts (the
        # ``_coerce_inputs`` validator converts each ``loss_fn_inputs`` value to ``TensorData``).
        def __init__(
            self,
            *,
            model_input: ModelInput,
            loss_fn_inputs: Mapping[str, TensorLike] = ...,
            model_input_spans: ProvenanceSpans | None = ...,
            loss_fn_input_spans: ProvenanceSpans | None = ...,
        ) -> None: ...

    @model_validator(mode="after")
    def _spans_come_in_pairs(self) -> Datum:
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise ValueError(
                "provenance comes as a pair: set both model_input_spans and loss_fn_input_spans or neither"
            )
        return self

    def with_provenance(self, model_input: ProvenanceSpans, loss_fn_inputs: ProvenanceSpans) -> Datum:
        """A copy carrying provenance: ``model_input`` spans tile the input tokens,
        ``loss_fn_inputs`` spans tile ``target_tokens``; ``ValueError`` if a tiling miscounts."""
        _check_tiling("model_input", model_input, self.model_input.length)
        targets = self.loss_fn_inputs.get("target_tokens")
        if targets is not None:
            _check_tiling("loss_fn_inputs", loss_fn_inputs, targets.resolved_shape[0])
        return self.model_copy(
            update={"model_input_spans": list(model_input), "loss_fn_input_spans": list(loss_fn_inputs)}
        )

    @field_validator("loss_fn_inputs", mode="before")
    @classmethod
    def _coerce_inputs(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):  # any mapping, as the typed constructor promises
            return value
        return {str(key): _to_tensor_data(str(key), item) for key, item in value.items()}


def _check_tiling(kwarg: str, spans: ProvenanceSpans, expected: int) -> None:
    total = sum(span.length for span in spans)
    if total != expected:
        raise ValueError(
            f"with_provenance {kwarg} spans cover {total} positions but the field has {expected}; "
            "the runs must tile it exactly"
        )
