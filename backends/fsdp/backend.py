"""``FsdpBackend``: the torch backend's engine, sharded over ``torch.distributed`` ranks with FSDP2.

The user's process holds the coordinator: ``FsdpBackend`` is ``TorchBackend`` (same queue, same
method bodies) constructed with ``engine=RankEngine(...)``, an implementation of the torch
``Engine`` protocol that forwards every engine call to all ranks of a ``RankGroup`` and returns
rank 0's answer. Each rank runs the real ``TorchEngine``
with an ``FsdpPlacement`` (``placement.py``). Because the queue hands the engine one call at a
time, in arrival order, every rank executes the same calls in the same order.

Before a call leaves the coordinator, what each rank would otherwise draw on its own is drawn
once and sent along: a ``create_model`` without ``LoraConfig.seed`` gets a random seed, and an
unseeded sampling request a random seed, so all ranks build the same adapter and draw the same
tokens (which also keeps their decode loops in lockstep).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from tinker_std.backend import AdapterState, ModelSpec, SampleRequest, SamplerSpec, Tokenizer
from tinker_std.capabilities import Precision
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import (
    AdamParams,
    ForwardBackwardOutput,
    LoraConfig,
    OptimStepResponse,
    ParsedCheckpointTinkerPath,
    SampleResponse,
    SupportedModel,
)

from ..torch.backend import TorchBackend
from ..torch.batching import BatchingMode
from ..torch.engine import TorchEngine
from ..torch.engine_protocol import ForwardBackwardJob
from ..torch.precision import precision_of
from .group import RankGroup

__all__ = ["FsdpBackend", "FsdpBackendBF16", "FsdpBackendFP32", "RankEngine"]


class RankEngine:
    """The torch ``Engine`` (``backends/torch/engine_protocol.py``) executed on every rank: each
    call goes to all ranks of ``group`` and rank 0's answer comes back.

    Metadata calls (``tokenizer``, ``supported_models``) are answered by ``local``, an engine that
    never loads weights. ``precision``: what the ranks compute in (``precision_of`` their options)."""

    def __init__(
        self, group: RankGroup, local: TorchEngine, checkpoint_store: CheckpointStore, precision: Precision
    ) -> None:
        self.group = group
        self.local = local
        self.checkpoint_store = checkpoint_store
        self.precision: Precision = precision

    def supported_models(self) -> list[SupportedModel]:
        return self.local.supported_models()

    def tokenizer(self, base_model: str) -> Tokenizer:
        return self.local.tokenizer(base_model)

    def create_model(self, base_model: str, lora: LoraConfig) -> ModelSpec:
        if lora.seed is None:
            lora = lora.model_copy(update={"seed": secrets.randbits(63)})
        spec: ModelSpec = self.group.call("create_model", base_model, lora)
        return spec

    def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> ModelSpec:
        spec: ModelSpec = self.group.call("load_model", path, with_optimizer)
        return spec

    def release_model(self, model_id: str) -> None:
        self.group.call("release_model", model_id)

    def forward_backward_many(self, jobs: Sequence[ForwardBackwardJob]) -> list[ForwardBackwardOutput | Exception]:
        results: list[ForwardBackwardOutput | Exception] = self.group.call("forward_backward_many", jobs)
        return results

    def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        response: OptimStepResponse = self.group.call("optim_step", model_id, params)
        return response

    def read_state(self, model_id: str) -> AdapterState:
        state: AdapterState = self.group.call("read_state", model_id)
        return state

    def gradient_snapshot(self, model_id: str) -> str:
        """Every rank keeps a copy of its own partial gradient (FB-14)."""
        handle: str = self.group.call("gradient_snapshot", model_id)
        return handle

    def restore_gradient(self, model_id: str, snapshot: str) -> None:
        self.group.call("restore_gradient", model_id, snapshot)

    def save_state(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        self.group.call("save_state", model_id, path, overwrite)

    def save_weights_for_sampler(self, model_id: str, path: ParsedCheckpointTinkerPath, overwrite: bool) -> None:
        self.group.call("save_weights_for_sampler", model_id, path, overwrite)

    def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> SamplerSpec:
        spec: SamplerSpec = self.group.call(
            "create_sampler", base_model=base_model, model_path=model_path, model_id=model_id
        )
        return spec

    def release_sampler(self, sampler_id: str) -> None:
        self.group.call("release_sampler", sampler_id)

    def sample_many(self, items: Sequence[tuple[str, SampleRequest]]) -> list[SampleResponse | Exception]:
        seeded = []
        for sampler_id, request in items:
            if request.sampling_params.seed is None:
                params = request.sampling_params.model_copy(update={"seed": secrets.randbits(62)})
                request = dataclasses.replace(request, sampling_params=params)
            seeded.append((sampler_id, request))
        results: list[SampleResponse | Exception] = self.group.call("sample_many", seeded)
        return results

    def parameter_bytes(self) -> dict[str, dict[str, int]]:
        """Per loaded base model: bytes of parameter storage rank 0 holds, ``{"base": its shard of
        the frozen base, "adapters": every LoRA tensor on it (replicated)}``."""
        result: dict[str, dict[str, int]] = self.group.call("parameter_bytes")
        return result

    def close(self) -> None:
        self.group.close()


class FsdpBackend(TorchBackend, family=True):
    """``TorchBackend`` serving a ``RankEngine`` over ``world_size`` ranks (see the module doc and
    ``docs/fsdp.md``).

    Options: those of ``TorchBackend`` (``checkpoint_dir``, ``device``, ``dtype``, ``models``,
    ``max_context_length``; ``batching`` is accepted and ignored: ranks run one pass per client),
    plus ``world_size`` (default 2), ``attach`` (``"HOST:PORT"``: wait there for ranks launched by
    ``torchrun``/``tinker-std fsdp-worker`` instead of starting them), ``authkey`` (hex key those
    ranks present; required with ``attach``), ``start_timeout`` (seconds, default 300),
    ``threads`` (intra-op threads per rank, default 1), ``master_port`` (port of the process
    group's rendezvous for ranks started here; default a free one) and ``timeout`` (seconds a
    collective may wait, default 600). The constructor returns when every rank is ready and raises
    ``WorkerStartError`` (one message, with the failing rank's log tail) when one is not.
    """

    name: ClassVar[str] = "fsdp"
    #: requests cross to the ranks' processes, where a token sink cannot follow: the finished reply only
    incremental_decode: ClassVar[bool] = False

    def __init__(
        self,
        *,
        world_size: int = 2,
        checkpoint_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        models: Sequence[str] | None = None,
        max_context_length: int | None = None,
        batching: BatchingMode = "auto",
        attach: str | None = None,
        authkey: str | None = None,
        start_timeout: float = 300.0,
        threads: int = 1,
        master_port: int | None = None,
        timeout: float = 600.0,
    ) -> None:
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if attach is not None and authkey is None:
            raise ValueError("attach needs authkey: the hex key the externally launched ranks present")
        store = CheckpointStore(checkpoint_dir)
        local = TorchEngine(store, device="cpu", models=models, max_context_length=max_context_length)
        engine_options = {
            "device": None if device is None else str(device),
            "dtype": None if dtype is None else str(dtype),
            "models": list(models) if models is not None else None,
            "max_context_length": max_context_length,
        }
        init = {
            "options": engine_options,
            "checkpoint_dir": str(store.root.resolve()),
            "token": secrets.token_hex(6),
            "threads": threads,
            "timeout": timeout,
        }
        self.world_size = world_size
        self.group = RankGroup(
            world_size, init, attach=attach, authkey=authkey, start_timeout=start_timeout, master_port=master_port
        )
        super().__init__(engine=RankEngine(self.group, local, store, precision_of(device, dtype)))


class FsdpBackendFP32(FsdpBackend, precision="fp32"):
    """``FsdpBackend`` in float32 off CPU: tolerance class ``fp32``, no bit-exact replay promise."""


class FsdpBackendBF16(FsdpBackend, precision="bf16"):
    """``FsdpBackend`` in bfloat16 or float16 (the GPU default): tolerance class ``bf16``."""
