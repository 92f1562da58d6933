"""A recipe run's options (``RunConfig``) and the rules that keep every option meaningful.

Nothing a user sets is dropped (the cookbook's form of CAP-4): an option a run would not read, or
one its checkpoint would override, is refused by name before the run trains or writes anything.

* ``require_log_packages``: ``--wandb`` / ``--tensorboard`` need their package (``MissingLogPackage``);
* ``refuse_unread_options``: training options in a run that does not train (``TRAINING_FIELDS``),
  and options a recipe reads in one mode only (its config's ``READ_WHEN``) in another;
* ``refuse_checkpoint_overrides``: a run from a checkpoint has its base model and LoRA rank;
* ``refuse_resume_conflicts`` / ``run_seed``: a resumed run keeps its own seed and starting point.

Each raises ``UnreadOption`` (the command line: exit status 2, the flag named).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import tinker_std as ts

__all__ = [
    "DEFAULT_RANK",
    "DEFAULT_SEED",
    "LOG_PACKAGES",
    "TRAINING_FIELDS",
    "MissingLogPackage",
    "RunConfig",
    "UnreadOption",
    "refuse_checkpoint_overrides",
    "refuse_resume_conflicts",
    "refuse_set_fields",
    "refuse_unread_options",
    "require_log_packages",
    "run_seed",
]


@dataclass(frozen=True)
class RunConfig:
    """Fields shared by every recipe. ``log_dir`` enables metrics.jsonl, checkpoints and curves."""

    backend: str | None = None  # registered backend name; None: the default (BE-8)
    base_model: str | None = None  # None: the backend's first model
    rank: int | None = None  # LoRA rank of a new adapter (None: DEFAULT_RANK); from a checkpoint: its rank
    seed: int | None = None  # None: a resumed run's own seed, else DEFAULT_SEED
    steps: int = 20
    learning_rate: float = 1e-2
    lr_schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    log_dir: str | None = None
    save_every: int = 0  # checkpoint every N steps (and always at the end) when log_dir is set
    resume: str | None = None  # tinker://.../weights/... (looked up in log_dir), a run-state JSON, or a log dir
    init_from: str | None = None  # start from these weights (fresh optimizer), e.g. an SFT checkpoint
    checkpoint_dir: str | None = None  # backend option; default $TINKER_STD_CHECKPOINT_DIR
    progress: bool = False  # tqdm bar
    wandb: bool = False
    tensorboard: bool = False
    plot: bool = True  # write <log_dir>/curves.png at the end

    #: Fields a recipe reads only under a condition: field -> (the condition, as an error names
    #: it; whether ``config`` meets it). Set away from its default otherwise, a field is refused.
    READ_WHEN: ClassVar[Mapping[str, tuple[str, Callable[[Any], bool]]]] = {}


#: The optional logs a run can be asked for (``RunConfig`` field = CLI flag): the module each
#: needs and how to install it.
LOG_PACKAGES = {
    "wandb": ("wandb", "pip install wandb"),
    "tensorboard": ("tensorboard", "pip install 'tinker-std[tensorboard]'"),
}


class MissingLogPackage(ImportError):
    """A log was asked for (``--wandb``, ``--tensorboard``) whose package is not installed."""


def require_log_packages(config: RunConfig) -> None:
    """Raise ``MissingLogPackage`` naming the flag when ``config`` asks for a log whose package is
    not installed: an asked-for log is never dropped, and the run fails before it opens a service
    or writes anything."""
    for field, (module, install) in LOG_PACKAGES.items():
        if getattr(config, field) and importlib.util.find_spec(module) is None:
            raise MissingLogPackage(f"--{field}: the {module} package is not installed ({install})")


#: The LoRA rank of a run's new adapter when ``RunConfig.rank`` is not given.
DEFAULT_RANK = 8
#: The seed of a fresh run when ``RunConfig.seed`` is not given.
DEFAULT_SEED = 0

#: The ``RunConfig`` fields only a training run reads: a run that does not train (``eval``) refuses
#: them when set (``refuse_unread_options``), and the command line does not offer them there.
TRAINING_FIELDS = (
    "rank", "seed", "steps", "learning_rate", "lr_schedule", "warmup_steps", "save_every", "resume", "init_from",
)  # fmt: skip


class UnreadOption(ValueError):
    """An option was set that the run would not read, or that its checkpoint overrides: refused by
    name, never ignored."""


def _flags(names: Sequence[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _set_fields(config: RunConfig, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``config`` sets away from its class's default."""
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    return [name for name in names if getattr(config, name) != defaults[name]]


def refuse_set_fields(config: RunConfig, names: Sequence[str], why: str) -> None:
    """Raise ``UnreadOption`` (``"--a, --b: <why>"``) when ``config`` sets any of ``names`` away
    from its default: fields the run would not read."""
    given = _set_fields(config, names)
    if given:
        raise UnreadOption(f"{_flags(given)}: {why}")


def refuse_unread_options(config: RunConfig, training: bool) -> None:
    """Raise ``UnreadOption`` when ``config`` sets (away from its default) a field the run would
    not read: a training option (``TRAINING_FIELDS``) in a run that does not train, or a field of
    the recipe's ``READ_WHEN`` whose condition does not hold (``--clip-low`` without
    ``--loss-fn ppo``)."""
    if not training:
        refuse_set_fields(config, TRAINING_FIELDS, "this recipe does not train, so it would not read them")
    unread = [
        f"{_flags([name])}: read only with {config.READ_WHEN[name][0]}"
        for name in _set_fields(config, list(config.READ_WHEN))
        if not config.READ_WHEN[name][1](config)
    ]
    if unread:
        raise UnreadOption("; ".join(unread))


def refuse_checkpoint_overrides(config: RunConfig, info: ts.GetInfoResponse) -> None:
    """A run from a checkpoint (``resume`` / ``init_from``) has the checkpoint's base model and LoRA
    rank: a ``base_model`` or ``rank`` given that differs from them would be silently overridden,
    so it is refused (the same values, as when a run is resumed with its own command line, are
    fine)."""
    source = "--resume" if config.resume else "--init-from"
    model = info.model_data.model_name
    if config.base_model is not None and model is not None and config.base_model != model:
        raise UnreadOption(f"--base-model {config.base_model!r}: the checkpoint of {source} is of {model!r}")
    if config.rank is not None and info.lora_rank is not None and config.rank != info.lora_rank:
        raise UnreadOption(f"--rank {config.rank}: the checkpoint of {source} has LoRA rank {info.lora_rank}")


def refuse_resume_conflicts(config: RunConfig, state: Mapping[str, Any]) -> None:
    """A resumed run (``state``: its run state) continues its own data split, random stream and
    checkpoint: a ``seed`` given that differs from the one it ran with, or an ``init_from`` other
    than the one it started from, would be overridden, so it is refused (``UnreadOption``)."""
    started = state.get("config", {}).get("init_from")
    if config.init_from is not None and config.init_from != started:
        raise UnreadOption(
            f"--init-from {config.init_from}: the run of --resume started from {started or 'a new adapter'}"
        )
    before = _resumed_seed(state)
    if config.seed is not None and before is not None and config.seed != before:
        raise UnreadOption(f"--seed {config.seed}: the run of --resume used seed {before}")


def _resumed_seed(state: Mapping[str, Any]) -> int | None:
    """The seed a run state's run ran with (older run states hold it in their ``config`` only);
    ``None`` for no run state."""
    seed = state.get("seed", state.get("config", {}).get("seed"))
    return None if seed is None else int(seed)


def run_seed(config: RunConfig, state: Mapping[str, Any]) -> int:
    """The seed of a run: ``config.seed``, else (resuming) the seed of the run it continues, else
    ``DEFAULT_SEED``."""
    if config.seed is not None:
        return config.seed
    before = _resumed_seed(state)
    return DEFAULT_SEED if before is None else before
