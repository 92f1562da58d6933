"""Token inputs: ``EncodedTextChunk`` and ``ModelInput`` (field-compatible with tinker 0.38)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import field_validator

from ._base import RequestModel

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

__all__ = ["EncodedTextChunk", "ModelInput", "TokensLike"]

#: What ``EncodedTextChunk(tokens=...)`` accepts and converts to ``list[int]`` (spec TYP-4): any
#: iterable of non-negative ints (a generator is consumed), a numpy integer array or a torch tensor.
TokensLike: TypeAlias = "Iterable[int] | npt.NDArray[np.integer[Any]] | torch.Tensor"


class EncodedTextChunk(RequestModel):
    """A run of token ids."""

    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"

    if TYPE_CHECKING:
        # ``tokens`` is a ``list[int]`` once constructed; ``_coerce_tokens`` converts what is accepted.
        def __init__(self, *, tokens: TokensLike, type: Literal["encoded_text"] = ...) -> None: ...

    @field_validator("tokens", mode="before")
    @classmethod
    def _coerce_tokens(cls, value: object) -> object:
        if hasattr(value, "tolist") and not isinstance(value, list):
            value = value.tolist()  # numpy arrays and torch tensors
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes, Sequence)):
            value = list(value)  # generators and other one-shot iterables: check every element
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            for i, token in enumerate(value):
                if isinstance(token, bool) or not isinstance(token, int):
                    raise ValueError(f"tokens[{i}] must be an int, got {type(token).__name__}")
                if token < 0:
                    raise ValueError(f"tokens[{i}] must be >= 0, got {token}")
        return value

    @property
    def length(self) -> int:
        return len(self.tokens)


class ModelInput(RequestModel):
    """The tokens fed to the model, as a list of chunks (only encoded text is defined in v0.1)."""

    chunks: list[EncodedTextChunk]

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        # numpy arrays / tensors go through the validator whole, so their integer elements are accepted
        return cls(chunks=[EncodedTextChunk.model_validate({"tokens": tokens})])

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        return [token for chunk in self.chunks for token in chunk.tokens]

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: EncodedTextChunk) -> ModelInput:
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        return self.append(EncodedTextChunk(tokens=[token]))
