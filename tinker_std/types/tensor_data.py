"""``TensorData``: a dense int64 or float32 array on the wire (field-compatible with tinker 0.38)."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import PrivateAttr, ValidatorFunctionWrapHandler, model_validator

from ._base import RequestModel

if TYPE_CHECKING:
    import torch

__all__ = ["TensorData", "TensorDtype"]

TensorDtype = Literal["int64", "float32"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMPY_DTYPE: dict[str, type[np.generic]] = {"int64": np.int64, "float32": np.float32}


class TensorData(RequestModel):
    """A flat list of numbers with a dtype and an optional shape (row-major).

    ``shape`` defaults to ``[len(data)]``. float32 data is rounded to float32 on construction so
    that ``to_numpy`` returns exactly what a backend receives. Non-finite floats are allowed here
    and rejected by request validation where a loss function forbids them.
    """

    data: list[int] | list[float]
    dtype: TensorDtype
    shape: list[int] | None = None
    #: tinker 0.38's CSR form of a 2-D tensor: given with ``data`` as the listed values and a 2-D
    #: ``shape``, the tensor is densified on construction (unlisted entries 0) and both are None after.
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None
    #: which cells a CSR tensor listed (row pointers, column indices); ``None`` for a dense one.
    #: tinker 0.38 gives unlisted cells "the pad value given when converting" (``to_numpy(pad_value)``).
    _csr_layout: tuple[tuple[int, ...], tuple[int, ...]] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        data = values.get("data")
        dtype = values.get("dtype")
        if dtype not in _NUMPY_DTYPE:
            raise ValueError(f"dtype must be 'int64' or 'float32', got {dtype!r}")
        if values.get("sparse_crow_indices") is not None or values.get("sparse_col_indices") is not None:
            data = _densify(values)
            values = {**values, "sparse_crow_indices": None, "sparse_col_indices": None}
        if isinstance(data, np.ndarray) or hasattr(data, "numpy"):
            data = np.asarray(data).reshape(-1)
        try:
            array = np.asarray(data if data is not None else [], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data must be a flat list of numbers: {exc}") from exc
        if dtype == "int64":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise ValueError("data of an int64 tensor must hold whole numbers")
            exact = [int(x) for x in np.asarray(data, dtype=object).reshape(-1)]
            if any(not (_INT64_MIN <= x <= _INT64_MAX) for x in exact):
                raise ValueError("data of an int64 tensor must lie in [-2**63, 2**63 - 1]")
            out: list[int] | list[float] = exact
        else:
            out = array.astype(np.float32).tolist()
        shape = values.get("shape")
        if shape is not None:
            shape = [int(s) for s in shape]
            if any(s < 0 for s in shape):
                raise ValueError(f"shape must be non-negative, got {shape}")
            if math.prod(shape) != len(out):
                raise ValueError(f"shape {shape} holds {math.prod(shape)} values but data has {len(out)}")
        return {**values, "data": out, "shape": shape}

    @model_validator(mode="wrap")
    @classmethod
    def _remember_csr_layout(cls, values: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Defined after ``_normalise`` so that it wraps it: it still sees the CSR fields.
        layout = None
        if isinstance(values, dict) and values.get("sparse_crow_indices") is not None:
            crow, col = values.get("sparse_crow_indices") or [], values.get("sparse_col_indices") or []
            layout = (tuple(int(x) for x in crow), tuple(int(x) for x in col))
        model = handler(values)
        if layout is not None and isinstance(model, TensorData):
            model._csr_layout = layout
        return model

    @property
    def resolved_shape(self) -> list[int]:
        """``shape``, or ``[len(data)]`` when no shape was given."""
        return list(self.shape) if self.shape is not None else [len(self.data)]

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any]) -> TensorData:
        if array.dtype.kind in ("i", "u"):
            dtype: TensorDtype = "int64"
        elif array.dtype.kind == "f":
            dtype = "float32"
        else:
            raise ValueError(f"cannot convert a numpy array of dtype {array.dtype} to TensorData")
        return cls(data=array.reshape(-1).tolist(), dtype=dtype, shape=list(array.shape))

    @classmethod
    def from_torch_sparse(cls, tensor: torch.Tensor, pad_value: int = 0) -> TensorData:
        """tinker 0.38's sparse constructor; here the result is always dense (pad 0 only)."""
        if pad_value != 0:
            raise ValueError("pad_value must be 0: tinker-std stores tensors dense")
        return cls.from_torch(tensor)

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        import torch

        if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
            tensor = tensor.float()
        return cls.from_numpy(tensor.detach().cpu().contiguous().numpy())

    def to_numpy(self, pad_value: int = 0) -> npt.NDArray[Any]:
        """The dense array; a tensor given in CSR form has ``pad_value`` in every unlisted cell
        (tinker 0.38's ``to_numpy(pad_value)``; the stored ``data`` has 0 there)."""
        array = np.asarray(self.data, dtype=_NUMPY_DTYPE[self.dtype]).reshape(self.resolved_shape)
        if pad_value != 0 and self._csr_layout is not None:
            array = array.copy()
            listed = np.zeros(array.shape, dtype=bool)
            crow, col = self._csr_layout
            for r in range(array.shape[0]):
                listed[r, list(col[crow[r] : crow[r + 1]])] = True
            array[~listed] = pad_value
        return array

    def to_torch(self, pad_value: int = 0) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.to_numpy(pad_value))

    def tolist(self, pad_value: int = 0) -> list[Any]:
        result: list[Any] = self.to_numpy(pad_value).tolist()
        return result


def _densify(values: dict[str, Any]) -> list[Any]:
    """The row-major dense data of a CSR tensor (values in ``data``); ValueError if inconsistent."""
    shape, crow, col = values.get("shape"), values.get("sparse_crow_indices"), values.get("sparse_col_indices")
    listed = list(np.asarray(values.get("data") if values.get("data") is not None else []).reshape(-1))
    if shape is None or len(shape) != 2 or crow is None or col is None:
        raise ValueError("a sparse CSR tensor needs a 2-D shape, sparse_crow_indices and sparse_col_indices")
    rows, cols = int(shape[0]), int(shape[1])
    crow, col = [int(x) for x in crow], [int(x) for x in col]
    if len(crow) != rows + 1 or crow[0] != 0 or crow[-1] != len(listed) or len(col) != len(listed):
        raise ValueError("sparse_crow_indices must rise from 0 to the number of values, one per row plus one")
    if any(b < a for a, b in itertools.pairwise(crow)) or any(not 0 <= c < cols for c in col):
        raise ValueError(f"sparse CSR indices out of order or outside [0, {cols})")
    dense: list[Any] = [0] * (rows * cols)
    for r in range(rows):
        for k in range(crow[r], crow[r + 1]):
            dense[r * cols + col[k]] = listed[k]
    return dense
