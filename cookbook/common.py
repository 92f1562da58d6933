"""Plumbing shared by the recipes, so that each recipe file is just its training loop.

* ``RunConfig`` (``run_config.py``, with the rules that refuse an option a run would not read):
  the fields every recipe has (backend, model, LoRA rank, steps, learning-rate schedule, logging,
  checkpoints, resume);
* ``Run``: opens the service and the training client (fresh, from ``init_from``, or resumed with
  its optimizer state from ``resume``), hands out the learning rate of a step, saves checkpoints
  together with a run-state JSON, and logs metrics (``metrics.jsonl``, a tqdm bar, wandb and
  tensorboard when asked for, ``curves.png`` at the end);
* ``DataOrder``: epoch-wise shuffled batches whose position is part of the run state;
* ``lr_at``: constant / linear / cosine schedules with linear warmup, computed on the client;
* ``load_jsonl``: a dataset file, or ``demo:NAME`` for one shipped in ``cookbook/data``.

Resume is exact: a checkpoint at step ``s`` is taken before step ``s`` runs, and the run state
saved with it holds everything the loop draws from afterwards (the RNG state and the data order;
the schedule is a function of the step). A run resumed from it repeats the uninterrupted run's
requests one for one, so on a deterministic backend its metrics are bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import tinker_std as ts

from .run_config import (
    DEFAULT_RANK,
    RunConfig,
    refuse_checkpoint_overrides,
    refuse_resume_conflicts,
    refuse_unread_options,
    require_log_packages,
    run_seed,
)

__all__ = [
    "RunConfig",
    "Run",
    "DataOrder",
    "lr_at",
    "load_jsonl",
    "demo_data_path",
    "load_run_state",
    "latest_checkpoint",
    "OnStep",
]

#: ``on_step(metrics)`` is called with each step's metrics once they are known.
OnStep = Callable[[dict[str, Any]], None]

SCHEDULES = ("constant", "linear", "cosine")


def lr_at(step: int, base: float, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning rate of ``step`` (0-based): linear warmup over ``warmup_steps``, then the schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; use one of {SCHEDULES}")
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "constant":
        return base
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return base * (1.0 - progress)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def demo_data_path(name: str) -> Path:
    """The path of a demo dataset shipped with the cookbook (``cookbook/data/<name>.jsonl``)."""
    path = Path(str(resources.files("tinker_std.cookbook").joinpath("data", f"{name}.jsonl")))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(f"no demo dataset {name!r}; shipped: {known}")
    return path


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; ``demo:NAME`` names a shipped demo dataset."""
    text = str(path)
    file = demo_data_path(text[5:]) if text.startswith("demo:") else Path(text)
    with open(file, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class DataOrder:
    """Indices ``0..n-1`` in batches, reshuffled with ``rng`` at the start of every epoch."""

    def __init__(self, n: int, batch_size: int, rng: random.Random, state: Mapping[str, Any] | None = None) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need at least one example and batch_size >= 1, got {n} and {batch_size}")
        self.n, self.batch_size, self.rng = n, batch_size, rng
        if state:
            self.order, self.position, self.epoch = list(state["order"]), int(state["position"]), int(state["epoch"])
        else:
            self.order, self.position, self.epoch = self._shuffled(), 0, 0

    def _shuffled(self) -> list[int]:
        order = list(range(self.n))
        self.rng.shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        batch = []
        for _ in range(self.batch_size):
            if self.position == self.n:
                self.order, self.position, self.epoch = self._shuffled(), 0, self.epoch + 1
            batch.append(self.order[self.position])
            self.position += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "position": self.position, "epoch": self.epoch}


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def load_run_state(resume: str, log_dir: str | None) -> dict[str, Any]:
    """The run state of ``resume``: a run-state JSON file, a log dir (its latest checkpoint), or a
    ``tinker://`` checkpoint path looked up in ``<log_dir>/checkpoints.jsonl``."""
    path = Path(resume)
    if not resume.startswith("tinker://"):
        file = path / "run_state.json" if path.is_dir() else path
        state: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        return state
    index = Path(log_dir or ".") / "checkpoints.jsonl"
    if index.is_file():
        for line in reversed(index.read_text(encoding="utf-8").splitlines()):
            entry = json.loads(line)
            if entry.get("checkpoint") == resume:
                return dict(entry)
    raise FileNotFoundError(
        f"no run state for {resume} in {index}; pass the --log-dir the run was written to, or the run-state JSON itself"
    )


def latest_checkpoint(log_dir: str | Path) -> str:
    """The ``tinker://`` path of the last checkpoint a recipe saved in ``log_dir``."""
    state = json.loads((Path(log_dir) / "run_state.json").read_text(encoding="utf-8"))
    return str(state["checkpoint"])


class Run:
    """One recipe run: service, training client, schedule, checkpoints and logging.

    Use as a context manager; on exit the bar is closed, the curves are drawn and the service is
    closed. ``start_step`` is 0, or the step a resumed run continues from; ``state`` is the run
    state it resumed from (``{}`` for a fresh run) so the recipe can restore its data order.
    """

    def __init__(
        self, config: RunConfig, recipe: str, *, training: bool = True, show: Sequence[str] = ("loss",)
    ) -> None:
        require_log_packages(config)
        refuse_unread_options(config, training)
        self.config, self.recipe, self.show = config, recipe, tuple(show)
        self.history: list[dict[str, Any]] = []
        self.log_dir = Path(config.log_dir) if config.log_dir else None
        self.state: dict[str, Any] = load_run_state(config.resume, config.log_dir) if config.resume else {}
        if self.state:
            refuse_resume_conflicts(config, self.state)
        #: the seed of this run (``run_seed``): its data split, new adapter and random stream
        self.seed: int = run_seed(config, self.state)
        options: dict[str, Any] = {} if config.checkpoint_dir is None else {"checkpoint_dir": config.checkpoint_dir}
        self.service = ts.ServiceClient(backend=config.backend, **options)
        self.start_step = int(self.state.get("step", 0))
        self.rng = random.Random(self.seed)
        if self.state:
            _set_rng_state(self.rng, self.state["rng"])
        self._training: ts.TrainingClient | None = None
        #: the LoRA rank of this run's adapter (a checkpoint's, once one is loaded)
        self.rank: int = DEFAULT_RANK if config.rank is None else config.rank
        try:
            self.base_model = config.base_model or self._first_model()
            if training:
                self._training = self._open_training_client()
                info = self._training.get_info()
                if self.state or config.init_from:
                    refuse_checkpoint_overrides(config, info)
                self.base_model = info.model_data.model_name or self.base_model
                self.rank = info.lora_rank or self.rank
            self._open_logs()
        except BaseException:
            self.service.close()
            raise

    # -- setup -----------------------------------------------------------------------------

    def _first_model(self) -> str:
        models = self.service.get_server_capabilities().supported_models
        if not models or models[0].model_name is None:
            raise ts.NotFoundError(f"backend {self.service.backend_name!r} serves no model")
        return models[0].model_name

    def _open_training_client(self) -> ts.TrainingClient:
        config = self.config
        if self.state:
            return self.service.create_training_client_from_state_with_optimizer(self.state["checkpoint"]).result()
        if config.init_from:
            return self.service.create_training_client_from_state(config.init_from).result()
        return self.service.create_lora_training_client(
            base_model=self.base_model, rank=self.rank, seed=self.seed
        ).result()

    def _open_logs(self) -> None:
        self._bar: Any = None
        self._wandb: Any = None
        self._tb: Any = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            metrics = self.log_dir / "metrics.jsonl"
            kept = [row for row in self.read_metrics() if row.get("step", 0) < self.start_step] if self.state else []
            metrics.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        if self.config.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.config.steps,
                initial=self.start_step,
                desc=f"{self.recipe} on {self.base_model}",
                unit="step",
                dynamic_ncols=True,
            )
        if self.config.wandb:  # installed: require_log_packages
            import wandb

            self._wandb = wandb.init(
                project="tinker-std",
                name=self.recipe,
                dir=str(self.log_dir or "."),
                config=dataclasses.asdict(self.config),
            )
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.log_dir or "runs"))

    @property
    def training(self) -> ts.TrainingClient:
        if self._training is None:
            raise RuntimeError("this run has no training client")
        return self._training

    # -- the loop's helpers ------------------------------------------------------------------

    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, c.learning_rate, c.steps, c.lr_schedule, c.warmup_steps)

    def adam(self, step: int) -> ts.AdamParams:
        return ts.AdamParams(learning_rate=self.lr(step))

    def checkpoint_due(self, step: int) -> bool:
        """Save before ``step``? Every ``save_every`` steps, and at the end (``step == steps``)."""
        if self.log_dir is None or step == self.start_step:
            return False
        every = self.config.save_every
        return step == self.config.steps or (every > 0 and step % every == 0)

    def save(self, step: int, **extra: Any) -> str:
        """Save weights + optimizer as ``step_<step>`` and the run state next to the metrics.

        Call it before drawing anything for ``step`` from ``self.rng``; ``extra`` (e.g. the data
        order) is stored in the run state for the recipe to restore."""
        path = self.training.save_state(f"step_{step:06d}").result().path
        state = {
            "recipe": self.recipe,
            "step": step,
            "checkpoint": path,
            "base_model": self.base_model,
            "seed": self.seed,
            "rng": _rng_state(self.rng),
            "lr_schedule": {
                "schedule": self.config.lr_schedule,
                "base": self.config.learning_rate,
                "warmup_steps": self.config.warmup_steps,
                "total_steps": self.config.steps,
                "next_lr": self.lr(step) if step < self.config.steps else None,
            },
            **extra,
            "config": dataclasses.asdict(self.config),
        }
        if self.log_dir is not None:
            (self.log_dir / "run_state.json").write_text(json.dumps(state), encoding="utf-8")
            with open(self.log_dir / "checkpoints.jsonl", "a", encoding="utf-8") as index:
                index.write(json.dumps(state) + "\n")
        return path

    def log(self, metrics: dict[str, Any], on_step: OnStep | None = None) -> None:
        """Record one step's metrics everywhere, then call ``on_step``."""
        self.history.append(metrics)
        if self.log_dir is not None:
            with open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
        step = int(metrics.get("step", len(self.history) - 1))
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in self.show if k in metrics}, refresh=False)
            self._bar.update(1)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if on_step is not None:
            on_step(metrics)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every row of ``<log_dir>/metrics.jsonl`` (earlier runs' rows included when resumed)."""
        file = self.log_dir / "metrics.jsonl" if self.log_dir is not None else None
        if file is None or not file.is_file():
            return list(self.history)
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self._bar is not None:
                self._bar.close()
            if self._wandb is not None:
                self._wandb.finish()
            if self._tb is not None:
                self._tb.close()
            if self.log_dir is not None and self.config.plot:
                from .plotting import write_curves

                write_curves(self.read_metrics(), self.log_dir / "curves.png")
        finally:
            self.service.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
