"""Capability declarations: what optional parts of the spec a backend implements (spec CAP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Capabilities", "ToleranceClass", "REQUIRED_LOSSES", "OPTIONAL_LOSSES", "OPTIONAL_CAPABILITIES"]

ToleranceClass = Literal["mock", "fp32", "bf16"]

#: Loss functions every backend MUST implement.
REQUIRED_LOSSES: frozenset[str] = frozenset({"cross_entropy", "importance_sampling", "ppo"})
#: Loss functions a backend MAY implement; each is declared as the capability ``loss:<name>``.
OPTIONAL_LOSSES: frozenset[str] = frozenset({"cispo", "dro", "gspo", "stable_reinforce"})

#: Every optional capability name (spec CAP-2).
OPTIONAL_CAPABILITIES: frozenset[str] = frozenset(
    {f"loss:{name}" for name in OPTIONAL_LOSSES}
    | {
        "introspection",
        "deterministic",
        "seeded_sampling",
        "topk_prompt_logprobs",
        "soft_targets",
        "checkpoint_management",
    }
)


@dataclass(frozen=True)
class Capabilities:
    """A frozen declaration, read from the backend class without starting it.

    ``optional`` holds names from ``OPTIONAL_CAPABILITIES``. ``tolerance`` names the numeric
    tolerance class (spec TOL) that the backend's outputs meet.
    """

    optional: frozenset[str] = field(default_factory=frozenset)
    tolerance: ToleranceClass = "fp32"

    def __post_init__(self) -> None:
        unknown = set(self.optional) - OPTIONAL_CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(OPTIONAL_CAPABILITIES)}")

    def supports(self, name: str) -> bool:
        """True for required features and for declared optional ones."""
        if name.startswith("loss:") and name[len("loss:") :] in REQUIRED_LOSSES:
            return True
        return name in self.optional

    def supports_loss(self, loss_fn: str) -> bool:
        return self.supports(f"loss:{loss_fn}")

    @classmethod
    def everything(cls, tolerance: ToleranceClass = "mock") -> Capabilities:
        return cls(optional=OPTIONAL_CAPABILITIES, tolerance=tolerance)
