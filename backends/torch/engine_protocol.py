"""``Engine``: the synchronous calls ``TorchBackend`` drives, as a typed seam.

``TorchBackend`` is transport only: it queues each ``Backend`` call (``scheduler.EngineQueue``) and
runs it on an ``Engine``. Two engines implement this protocol today: ``TorchEngine`` (``engine.py``,
the real work in this process) and the fsdp backend's ``RankEngine`` (``backends/fsdp/backend.py``,
every call executed on all ranks of a process group, rank 0's answer returned). A new engine passes
``TorchBackend(engine=...)`` and gets the queue, the batching of concurrent requests and the
``Backend`` contract for free (see ``backends/README.md``).

Contract: calls are made one at a time, in arrival order (``EngineQueue``), except ``tokenizer`` and
``supported_models``, which may run concurrently with one running call. Errors are ``tinker_std``
errors raised before any state changes; the ``*_many`` calls put each item's error in its slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tinker_std.backend import AdapterState, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.capabilities import Precision
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
    SupportedModel,
)

if TYPE_CHECKING:
    from tinker_std.training_math import DatumLoss

__all__ = ["Engine", "ForwardBackwardJob"]


@dataclass(frozen=True)
class ForwardBackwardJob:
    """One ``forward_backward`` request (the arguments of ``TorchEngine.forward_backward``).
    ``datum_loss``: a per-datum custom loss that replaces ``loss_fn`` (CLG-4); such a job runs
    alone (never in a multi-tenant pass)."""

    model_id: str
    data: Sequence[Datum]
    loss_fn: str
    loss_fn_config: Mapping[str, float]
    backward: bool
    datum_loss: DatumLoss | None = None


@runtime_checkable
class Engine(Protocol):
    """What a backend on the torch engine needs from it (spec BE: one method per contract call)."""

    #: Where ``tinker://`` paths live.
    checkpoint_store: CheckpointStore
    #: The precision it computes in (``TorchBackend`` declares the matching capabilities).
    precision: Precision

    def supported_models(self) -> list[SupportedModel]:
        """Every listed model with its maximum context length."""
        ...

    def tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model``."""
        ...

    def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        """A new training model with a fresh adapter and optimizer."""
        ...

    def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        """A new training model from a checkpoint."""
        ...

    def release_model(self, model_id: str) -> None:
        """Forget a training model (a no-op for unknown ids)."""
        ...

    def forward_backward_many(self, jobs: Sequence[ForwardBackwardJob]) -> list[ForwardBackwardOutput | Exception]:
        """Several ``forward_backward`` requests in order; each slot its output or its error."""
        ...

    def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        """One optimizer step over the model's adapter."""
        ...

    def read_state(self, model_id: str) -> AdapterState:
        """Weights, gradients and optimizer moments (``introspection``)."""
        ...

    def gradient_snapshot(self, model_id: str) -> str:
        """Keep a copy of the accumulated gradient (on every rank); returns its handle (FB-14)."""
        ...

    def restore_gradient(self, model_id: str, snapshot: str) -> None:
        """Put back the copy ``gradient_snapshot`` kept."""
        ...

    def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Adapter and optimizer state under ``path``."""
        ...

    def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        """Adapter weights under ``path``."""
        ...

    def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        """A sampler over fixed weights (exactly one argument)."""
        ...

    def release_sampler(self, sampler_id: str) -> None:
        """Forget a sampler (a no-op for unknown ids)."""
        ...

    def sample_many(self, items: Sequence[tuple[str, SampleRequest]]) -> list[SampleResponse | Exception]:
        """Several ``(sampler_id, request)`` pairs; each slot its response or its error."""
        ...

    def close(self) -> None:
        """Release everything the engine holds."""
        ...
