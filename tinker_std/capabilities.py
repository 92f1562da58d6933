"""Capability declarations: what optional parts of the spec a backend implements (spec CAP).

``Capabilities`` is the declaration a backend class carries. ``PrecisionVariants`` is the one way a
backend family whose declaration depends on the numeric precision chosen at construction (torch,
fsdp, modal) names a class per precision, so that each class's ``capabilities`` stays a class
attribute readable without constructing it (CAP-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

__all__ = [
    "Capabilities",
    "Precision",
    "PrecisionVariants",
    "ToleranceClass",
    "REQUIRED_LOSSES",
    "OPTIONAL_LOSSES",
    "OPTIONAL_CAPABILITIES",
]

ToleranceClass = Literal["mock", "fp32", "bf16"]

#: A backend's numeric precision as its declaration sees it: ``"cpu"`` (float32 on the CPU:
#: ``fp32`` class and bit-exact replays, ``deterministic``), ``"fp32"`` (float32 off the CPU: ``fp32``
#: class, no replay promise) or ``"bf16"`` (bfloat16 or float16: ``bf16`` class).
Precision = Literal["cpu", "fp32", "bf16"]

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
        "topk_sample_logprobs",
        "target_prompt_logprobs",
        "prompt_alt_tokens",
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


class PrecisionVariants:
    """A backend family with one class per ``Precision``; mix in before ``Backend``.

    The family's root class sets ``optional_capabilities`` (what every precision declares;
    ``"cpu"`` adds ``deterministic``) and ``precision_for(options)`` (the precision the constructor
    options give). Variants are declared with a class keyword and nothing else::

        class TorchBackendBF16(TorchBackend, precision="bf16"):
            \"\"\"``TorchBackend`` in bfloat16 or float16.\"\"\"

    Constructing the root returns an instance of the variant its options select, so
    ``type(backend).capabilities`` matches what it runs; constructing a variant gives that variant.
    A direct subclass of ``PrecisionVariants`` is a root (float32 on the CPU); so is a subclass
    declared with ``family=True`` (``class FsdpBackend(TorchBackend, family=True)``: its own
    variants). Any other subclass is an ordinary subclass: same precision and capabilities as its
    parent, constructed as itself.
    """

    capabilities: ClassVar[Capabilities]
    optional_capabilities: ClassVar[frozenset[str]] = frozenset()
    precision: ClassVar[Precision] = "cpu"
    _family: ClassVar[type[PrecisionVariants] | None] = None
    _variants: ClassVar[dict[Precision, type[PrecisionVariants]]]

    def __init_subclass__(cls, precision: Precision | None = None, family: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = cls._family
        if precision is not None:
            if inherited is None:
                raise TypeError(f"{cls.__name__}: a precision variant needs a family root to derive from")
            cls.precision = precision
            inherited._variants[precision] = cls
        elif family or inherited is None:
            cls.precision = "cpu"
            cls._family = cls
            cls._variants = {"cpu": cls}
        else:
            return  # an ordinary subclass: the parent's precision and declaration
        cls.capabilities = cls.capabilities_for(cls.precision)

    @classmethod
    def capabilities_for(cls, precision: Precision) -> Capabilities:
        """The declaration of this family at ``precision``."""
        optional = cls.optional_capabilities | ({"deterministic"} if precision == "cpu" else set())
        return Capabilities(optional=frozenset(optional), tolerance="bf16" if precision == "bf16" else "fp32")

    @classmethod
    def precision_for(cls, options: Mapping[str, Any]) -> Precision:
        """The precision the constructor ``options`` select (roots override this)."""
        return "cpu"

    def __new__(cls, **options: Any) -> Self:
        chosen = cls._variants.get(cls.precision_for(options), cls) if cls is cls._family else cls
        instance: Self = super().__new__(chosen)  # type: ignore[assignment]  # chosen is cls or a subclass
        return instance
