"""``tinker_std.capabilities.PrecisionVariants``: one class per precision, declarations as the spec says.

The nine precision classes of torch, fsdp and modal declare exactly the table below (written out
here, not computed from the code under test), the root class of a family returns the variant its
options select, and a subclass of a variant keeps that variant's declaration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tinker_std.backends.fsdp import FsdpBackend, FsdpBackendBF16, FsdpBackendFP32
from tinker_std.backends.modal import ModalBackend, ModalBackendBF16, ModalBackendFP32
from tinker_std.backends.torch import TorchBackend, TorchBackendBF16, TorchBackendFP32, TorchEngine
from tinker_std.capabilities import Capabilities, PrecisionVariants
from tinker_std.checkpoints import CheckpointStore

TORCH = {
    "loss:cispo",
    "loss:dro",
    "loss:gspo",
    "loss:stable_reinforce",
    "soft_targets",
    "introspection",
    "seeded_sampling",
    "topk_prompt_logprobs",
    "topk_sample_logprobs",
    "target_prompt_logprobs",
    "prompt_alt_tokens",
    "checkpoint_management",
}
#: the checkpoints live on a Modal Volume, not in a local store
MODAL = TORCH - {"checkpoint_management"}

DECLARED = [
    (TorchBackend, "torch", TORCH | {"deterministic"}, "fp32"),
    (TorchBackendFP32, "torch", TORCH, "fp32"),
    (TorchBackendBF16, "torch", TORCH, "bf16"),
    (FsdpBackend, "fsdp", TORCH | {"deterministic"}, "fp32"),
    (FsdpBackendFP32, "fsdp", TORCH, "fp32"),
    (FsdpBackendBF16, "fsdp", TORCH, "bf16"),
    (ModalBackend, "modal", MODAL | {"deterministic"}, "fp32"),
    (ModalBackendFP32, "modal", MODAL, "fp32"),
    (ModalBackendBF16, "modal", MODAL, "bf16"),
]


@pytest.mark.parametrize(("cls", "name", "optional", "tolerance"), DECLARED, ids=[c[0].__name__ for c in DECLARED])
def test_each_precision_class_declares_its_table_row(cls: type, name: str, optional: set[str], tolerance: str) -> None:
    assert cls.name == name  # type: ignore[attr-defined]
    assert cls.capabilities == Capabilities(optional=frozenset(optional), tolerance=tolerance)  # type: ignore[attr-defined]


def test_variants_belong_to_their_family() -> None:
    assert TorchBackend._variants == {"cpu": TorchBackend, "fp32": TorchBackendFP32, "bf16": TorchBackendBF16}
    assert FsdpBackend._variants == {"cpu": FsdpBackend, "fp32": FsdpBackendFP32, "bf16": FsdpBackendBF16}
    assert ModalBackend._variants == {"cpu": ModalBackend, "fp32": ModalBackendFP32, "bf16": ModalBackendBF16}


def test_the_root_returns_the_variant_its_options_select(tmp_path: Path) -> None:
    for dtype, want in (("float32", TorchBackend), ("bfloat16", TorchBackendBF16), ("float16", TorchBackendBF16)):
        backend = TorchBackend(checkpoint_dir=tmp_path / dtype, device="cpu", dtype=dtype)
        try:
            assert type(backend) is want, dtype
        finally:
            asyncio.run(backend.close())
    assert ModalBackend.precision_for({"offline": True, "dtype": "bfloat16"}) == "cpu"
    assert ModalBackend.precision_for({"offline": False, "dtype": "float32"}) == "fp32"
    assert ModalBackend.precision_for({"offline": False}) == "bf16"


def test_an_engine_passed_in_is_served_and_sets_the_precision(tmp_path: Path) -> None:
    engine = TorchEngine(CheckpointStore(tmp_path), device="cpu", dtype="bfloat16")
    backend = TorchBackend(engine=engine)
    try:
        assert type(backend) is TorchBackendBF16
        assert backend.engine is engine and backend.checkpoint_store is engine.checkpoint_store
        with pytest.raises(TypeError, match="device"):
            TorchBackend(engine=engine, device="cpu")
    finally:
        asyncio.run(backend.close())


def test_a_subclass_of_a_variant_keeps_its_declaration(tmp_path: Path) -> None:
    class Logged(TorchBackendFP32):
        pass

    assert Logged.capabilities == TorchBackendFP32.capabilities
    backend = Logged(checkpoint_dir=tmp_path, device="cpu")  # float32 on the CPU, yet constructed as asked
    try:
        assert type(backend) is Logged
    finally:
        asyncio.run(backend.close())


def test_a_variant_needs_a_family() -> None:
    with pytest.raises(TypeError, match="family root"):

        class Orphan(PrecisionVariants, precision="bf16"):
            pass
