"""The backend contract: what a provider implements (spec section BE).

A backend is a class deriving from ``Backend``. The shared client layer in ``tinker_std.client``
gives every backend futures, per-client ordering, chunking of large requests, request validation
and the custom-loss surrogate, so a backend implements only the engine calls below. Each method
is a coroutine run on the client's event loop; the client layer guarantees that calls for one
``model_id`` arrive one at a time, in submission order, already validated. Calls for different
models may overlap, which is what lets a backend batch tenants together.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .capabilities import Capabilities
from .errors import Unsupported
from .types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetServerCapabilitiesResponse,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
    SamplingParams,
)

if TYPE_CHECKING:
    from .training_math import DatumLoss

__all__ = [
    "Backend",
    "GradientSnapshot",
    "ModelSpec",
    "SamplerSpec",
    "AdapterState",
    "Tokenizer",
    "SampleRequest",
    "SinkClosed",
    "TokenSink",
    "new_model_id",
]


def new_model_id(prefix: str) -> str:
    """An id unique across processes, usable as the ``<run>`` of a checkpoint path (CKPT-1)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@runtime_checkable
class Tokenizer(Protocol):
    """The part of a tokenizer tinker-std relies on (Hugging Face tokenizers satisfy it)."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class ModelSpec:
    """A training model as the client layer needs to know it for validation."""

    model_id: str
    base_model: str
    vocab_size: int
    max_context_length: int
    lora: LoraConfig


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: fixed weights (base model, a saved checkpoint or a snapshot of a training model)."""

    sampler_id: str
    base_model: str
    vocab_size: int
    max_context_length: int


class SinkClosed(Exception):
    """Raised by a ``TokenSink`` to stop its request (e.g. the client of an OpenAI stream went
    away): the backend decodes no further token for that request and settles it with
    ``RequestFailedError`` (category ``"user"``, this exception as ``__cause__``). Other requests
    decoded beside it are unaffected (SMP-12)."""


class TokenSink(Protocol):
    """Where a backend with incremental decode (``Backend.incremental_decode``) reports a request's
    sampled tokens as they are decoded: one call per token of sequence ``sequence`` (``0 ..
    num_samples - 1``), in order, each before the request's response settles, with the token's raw
    logprob (SMP-3) and, with ``topk_sample_logprobs = k > 0``, its top-k ``(id, logprob)`` pairs
    (else ``None``). The calls come from the backend's engine thread: a sink must be quick and must
    not block (the server's OpenAI streams put each token on a queue). A sink stops its request by
    raising ``SinkClosed``; any other exception it raises also fails its own request only
    (``RequestFailedError``, category ``"server"``). The response stays the authority: it holds
    every reported token, in the same order, with the same logprobs."""

    def __call__(self, sequence: int, token: int, logprob: float, top: list[tuple[int, float]] | None) -> None: ...


@dataclass(frozen=True)
class SampleRequest:
    """One validated sampling request. ``prompt`` is a flat list of token ids."""

    prompt: list[int]
    num_samples: int
    sampling_params: SamplingParams
    include_prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    #: k > 0: each sequence's ``topk_logprobs`` (capability ``topk_sample_logprobs``, SDK-6)
    topk_sample_logprobs: int = 0
    #: per prompt position ``i + 1``, the token ids whose logprob to return; ``-1`` asks nothing
    #: (capability ``target_prompt_logprobs``, SDK-7)
    target_prompt_ids: tuple[tuple[int, ...], ...] | None = None
    #: k > 0: ``k`` draws at every prompt position after the first (capability ``prompt_alt_tokens``, SDK-8)
    prompt_alt_tokens_k: int = 0
    #: told each token as it is decoded, by a backend with ``incremental_decode`` (never set for others)
    on_tokens: TokenSink | None = field(default=None, compare=False, repr=False)


#: What ``Backend.gradient_snapshot`` returns: opaque to everyone but the backend that made it.
GradientSnapshot = object


@dataclass(frozen=True)
class AdapterState:
    """Introspection snapshot of one training model (capability ``introspection``).

    Arrays are keyed by ``<module path>.lora_A`` / ``<module path>.lora_B`` (spec LORA-9).
    ``grads`` is the gradient accumulated since the last ``optim_step`` (zeros when none).
    ``exp_avg``/``exp_avg_sq`` are AdamW's first and second moments (zeros before the first step)
    and ``step`` its step counter.
    """

    weights: Mapping[str, npt.NDArray[np.floating[Any]]]
    grads: Mapping[str, npt.NDArray[np.floating[Any]]]
    exp_avg: Mapping[str, npt.NDArray[np.floating[Any]]]
    exp_avg_sq: Mapping[str, npt.NDArray[np.floating[Any]]]
    step: int


class Backend(ABC):
    """Base class of every backend.

    ``name`` and ``capabilities`` are class attributes so they can be read without constructing
    or starting the backend. ``__init__`` takes keyword options (from ``ServiceClient(**options)``)
    and must be cheap; expensive work belongs in ``start``.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: Whether ``forward_backward_datum_loss`` is implemented: the one-pass seam for per-datum
    #: custom losses (spec CLG-4). Without it the client layer runs them in two passes (FB-11).
    one_pass_datum_loss: ClassVar[bool] = False
    #: True for a backend that reports each decoded token to ``SampleRequest.on_tokens`` (a
    #: ``TokenSink``) while it decodes; a client must not set ``on_tokens`` for any other backend.
    incremental_decode: ClassVar[bool] = False

    async def start(self) -> None:
        """Acquire resources. Called once, on the client's event loop, before any other call."""

    async def close(self) -> None:
        """Release resources. No call follows."""

    @abstractmethod
    async def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        """The models this backend serves, with their maximum context length."""

    @abstractmethod
    def get_tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model``; ``NotFoundError`` for an unknown model."""

    @abstractmethod
    async def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        """A new training model: fresh LoRA adapter on ``base_model``, fresh AdamW state."""

    @abstractmethod
    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        """A new training model from a checkpoint; optimizer state restored only if asked (CKPT-4/5)."""

    @abstractmethod
    async def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float],
        backward: bool,
    ) -> ForwardBackwardOutput:
        """Score ``data`` under the current weights; with ``backward`` add d(loss)/d(weights) to the
        accumulated gradient (FB-1..FB-6). ``loss_fn_config`` holds only keys the loss declares."""

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        """``forward_backward`` with a per-datum ``loss`` in place of a built-in one, in one pass:
        logprobs with autograd, ``loss`` on them, one backward (``training_math.run_datum_loss``
        gives the outputs and metrics, CLG-4). Only where ``one_pass_datum_loss`` is declared."""
        raise Unsupported("one_pass_datum_loss", self.name)

    @abstractmethod
    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        """Apply one AdamW step with the accumulated gradient, then clear it (OPT-1..OPT-7)."""

    @abstractmethod
    async def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Write adapter weights and optimizer state under ``path`` (CKPT-1..CKPT-3)."""

    @abstractmethod
    async def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Write adapter weights only under ``path``."""

    @abstractmethod
    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        """A sampler over fixed weights: the base model, a saved checkpoint, or a snapshot of the
        training model ``model_id`` as it is now (later training does not move it, SMP-14).
        Exactly one argument is given."""

    @abstractmethod
    async def sample(self, sampler_id: str, request: SampleRequest) -> SampleResponse:
        """Sample ``request.num_samples`` completions (SMP-1..SMP-13)."""

    async def release_model(self, model_id: str) -> None:
        """Forget a training model (its checkpoints stay). Optional."""

    async def release_sampler(self, sampler_id: str) -> None:
        """Forget a sampler and free what it holds (for a snapshot sampler, its copy of the
        adapter); called once no ``SamplingClient`` of it is left (SMP-19). Requests submitted
        before the call still complete. Unknown ids are a no-op. Optional: the default keeps it."""

    async def read_state(self, model_id: str) -> AdapterState:
        """Weights, accumulated gradient and optimizer state (capability ``introspection``)."""
        raise Unsupported("introspection", self.name)

    async def gradient_snapshot(self, model_id: str) -> GradientSnapshot | None:
        """A copy of ``model_id``'s accumulated gradient that ``restore_gradient`` can put back, so
        the client layer can run one call as several ``forward_backward`` chunks and still undo
        the whole call when a chunk fails (FB-14). Optional: the default ``None`` says the backend
        cannot copy its gradient, and the client layer then sends each call as one
        ``forward_backward``, which must itself leave the gradient unchanged when it fails."""
        return None

    async def restore_gradient(self, model_id: str, snapshot: GradientSnapshot) -> None:
        """Make ``model_id``'s accumulated gradient what it was when ``snapshot`` was taken.
        Called only with a snapshot this backend returned for this model, before its next
        ``optim_step``."""
        raise Unsupported("gradient_snapshot", self.name)
