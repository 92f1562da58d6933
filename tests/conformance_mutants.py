"""Broken variants of the mock backend: each breaks one spec statement on purpose.

``tests/test_conformance_mutants.py`` runs the conformance suite against each of them (with this
folder on ``PYTHONPATH``, as ``--tinker-backend conformance_mutants:MeanLossMock``) and checks that
the suite notices: the run fails and the report marks the broken statements as failed. A mutant
that the suite passes is a hole in the suite.

Every mutant is a small subclass of ``MockBackend`` that changes one behaviour through the mock's
(private) model table; not an example of how to write a backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from hypothesis import Phase, settings

from tinker_std.backends.mock import MockBackend
from tinker_std.types import AdamParams, Datum, ForwardBackwardOutput, OptimStepResponse, ParsedCheckpointTinkerPath

__all__ = [
    "MeanLossMock",
    "NoAccumulationMock",
    "LazyGradientMock",
    "ForgetfulOptimizerMock",
    "LiveSamplerMock",
    "run_suite",
]


def _params(backend: MockBackend, model_id: str) -> dict[str, torch.Tensor]:
    return backend._model(model_id).adapter.params


def _grads(backend: MockBackend, model_id: str) -> dict[str, torch.Tensor]:
    """The accumulated gradient, as copies (zeros where there is none)."""
    return {
        name: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for name, p in _params(backend, model_id).items()
    }


class MeanLossMock(MockBackend):
    """LOSS-1: the loss and its gradient are means over the call's target tokens instead of sums."""

    name: ClassVar[str] = "mock-mean-loss"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        before = _grads(self, model_id)
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        n = sum(d.model_input.length for d in data)
        if backward:
            for name, p in _params(self, model_id).items():
                if p.grad is not None:
                    p.grad = before[name] + (p.grad - before[name]) / n
        return out.model_copy(update={"metrics": {**out.metrics, "loss:sum": out.metrics["loss:sum"] / n}})


class NoAccumulationMock(MockBackend):
    """FB-4: every forward_backward replaces the accumulated gradient instead of adding to it."""

    name: ClassVar[str] = "mock-no-accumulation"

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if backward:
            for p in _params(self, model_id).values():
                p.grad = None
        return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)


class LazyGradientMock(MockBackend):
    """FB-3/FB-5 (ordering): a forward_backward's gradient lands only after the next optim_step, as if
    the backend ran the two requests in the wrong order. The step uses the gradient from before."""

    name: ClassVar[str] = "mock-lazy-gradient"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._pending: dict[str, dict[str, torch.Tensor]] = {}

    async def forward_backward(
        self, model_id: str, data: list[Datum], loss_fn: str, loss_fn_config: Mapping[str, float], backward: bool
    ) -> ForwardBackwardOutput:
        if not backward:
            return await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        before = _grads(self, model_id)
        out = await super().forward_backward(model_id, data, loss_fn, loss_fn_config, backward)
        pending = self._pending.setdefault(model_id, {})
        for name, p in _params(self, model_id).items():
            if p.grad is not None:
                pending[name] = pending.get(name, torch.zeros_like(p)) + (p.grad - before[name])
                p.grad = before[name]
        return out

    async def optim_step(self, model_id: str, params: AdamParams) -> OptimStepResponse:
        out = await super().optim_step(model_id, params)
        for name, delta in self._pending.pop(model_id, {}).items():
            _params(self, model_id)[name].grad = delta
        return out


class ForgetfulOptimizerMock(MockBackend):
    """CKPT-5: loading with the optimizer restores the weights but starts a fresh AdamW."""

    name: ClassVar[str] = "mock-forgetful-optimizer"

    async def load_model(self, path: ParsedCheckpointTinkerPath, with_optimizer: bool) -> Any:
        return await super().load_model(path, with_optimizer=with_optimizer and path.checkpoint_type != "training")


class LiveSamplerMock(MockBackend):
    """SMP-14/ORD-13: save_weights_and_get_sampling_client serves the live adapter, not a snapshot."""

    name: ClassVar[str] = "mock-live-sampler"

    async def create_sampler(
        self,
        *,
        base_model: str | None = None,
        model_path: ParsedCheckpointTinkerPath | None = None,
        model_id: str | None = None,
    ) -> Any:
        spec = await super().create_sampler(base_model=base_model, model_path=model_path, model_id=model_id)
        if model_id is not None:
            sampler = self._samplers[spec.sampler_id]
            self._samplers[spec.sampler_id] = dataclasses.replace(sampler, adapter=self._model(model_id).adapter)
        return spec


# -- running the suite in a subprocess (shared by the suite's self-tests) ----------------------------

TESTS_DIR = Path(__file__).resolve().parent

#: Hypothesis profile for runs that only need to know whether the suite fails (``-p conformance_mutants
#: --hypothesis-profile no-shrink``): shrinking a failing example to a minimal one is most of the
#: time a failing property test takes.
settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])


def run_suite(
    backend: str, tmp_path: Path, selection: Sequence[str], *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the conformance suite (``selection``: ``--pyargs`` targets such as
    ``tinker_std.conformance.test_training::test_x``) against ``backend`` in a fresh process, with
    this folder importable; return the process and its ``--tinker-report`` (``{}`` if none)."""
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p),
        "TINKER_STD_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "OMP_NUM_THREADS": "1",  # tiny models: threads only add contention when runs overlap
    }
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", *selection,
        "--tinker-backend", backend, "--tinker-report", str(report), *extra,
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    return proc, data
