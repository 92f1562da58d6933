"""Mutants of the type statements (TYP): a broken ``tinker_std.types``, one statement each.

Decision (issue 19): the TYP statements are guarantees of the library, not of a backend. The
types live in ``tinker_std.types``; every backend receives and returns them, and none can change
how they validate, default or convert (spec/01-types.md says so in its preamble). A provider breaks
a TYP statement only by shipping a modified ``tinker_std`` or its own client types. Each mutant here
models exactly that: it patches one thing of ``tinker_std.types`` in the suite's process, so that
``conformance/test_types.py`` (which checks the installed library) must notice. The provider
itself is the unmodified independent backend.

The patch is applied when the suite resolves the mutant's class name (PEP 562 module
``__getattr__``), so importing this module (to read ``MUTANTS``) patches nothing, and each run
patches only its own statement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import Mutant

BASE = "independent_backend:IndependentBackend"
TYPES = "tinker_std.conformance.test_types"


def _set_default(cls: Any, field: str, value: Any) -> None:
    cls.model_fields[field].default = value
    cls.model_rebuild(force=True)


def _adam_beta2() -> None:
    import tinker_std as ts

    _set_default(ts.AdamParams, "beta2", 0.999)  # torch's default instead of tinker's 0.95


def _lora_unembed() -> None:
    import tinker_std as ts

    _set_default(ts.LoraConfig, "train_unembed", False)


def _sampling_temperature() -> None:
    import tinker_std as ts

    _set_default(ts.SamplingParams, "temperature", 0.7)


def _sequence_id() -> None:
    import tinker_std as ts

    _set_default(ts.SampledSequence, "sequence_id", "seq-0")


def _mutable_requests() -> None:
    import tinker_std as ts

    ts.AdamParams.model_config["frozen"] = False
    ts.AdamParams.model_rebuild(force=True)


def _learning_rate_unchecked() -> None:
    import tinker_std as ts

    ts.AdamParams.model_fields["learning_rate"].metadata = []
    ts.AdamParams.model_rebuild(force=True)


def _to_ints_first_chunk() -> None:
    import tinker_std as ts

    ts.ModelInput.to_ints = lambda self: list(self.chunks[0].tokens) if self.chunks else []  # type: ignore[method-assign]


def _to_numpy_float64() -> None:
    import tinker_std as ts

    original = ts.TensorData.to_numpy
    ts.TensorData.to_numpy = lambda self: original(self).astype(np.float64)  # type: ignore[method-assign]


def _from_numpy_ints_as_floats() -> None:
    import tinker_std as ts

    original = ts.TensorData.from_numpy.__func__  # type: ignore[attr-defined]

    def from_numpy(cls: Any, array: Any) -> Any:
        array = np.asarray(array)
        return original(cls, array.astype(np.float32) if array.dtype.kind in "iu" else array)

    ts.TensorData.from_numpy = classmethod(from_numpy)  # type: ignore[method-assign, assignment]


def _weights_int64() -> None:
    from tinker_std.types import datum

    datum.LOSS_INPUT_DTYPES["weights"] = "int64"


def _output_has_loss() -> None:
    import tinker_std as ts

    ts.ForwardBackwardOutput.loss = property(lambda self: self.metrics.get("loss:sum"))  # type: ignore[attr-defined]


def _loss_names_reordered() -> None:
    import tinker_std as ts
    from tinker_std.types import training

    names = ("cross_entropy", "ppo", "importance_sampling", "cispo", "dro", "gspo")
    ts.types.LOSS_FN_TYPES = names
    training.LOSS_FN_TYPES = names


def _checkpoint_kinds_swapped() -> None:
    from tinker_std.types import checkpoint

    checkpoint.KIND_OF_SEGMENT.update({"weights": "sampler", "sampler_weights": "training"})


def _info_field_missing() -> None:
    import tinker_std as ts

    del ts.GetInfoResponse.model_fields["is_lora"]
    ts.GetInfoResponse.model_rebuild(force=True)


def _resolved_shape_flat() -> None:
    import tinker_std as ts

    ts.TensorData.resolved_shape = property(lambda self: [len(self.data)])  # type: ignore[method-assign, assignment]


def _trainable_default() -> None:
    import tinker_std as ts

    _set_default(ts.SupportedModel, "trainable", False)


#: class name -> (statement, test, what the patch breaks, patch)
_PATCHES: dict[str, tuple[str, str, str, Callable[[], None]]] = {
    "AdamBeta2Default": ("TYP-9", "test_constraint_violations_name_the_field", "AdamParams.beta2 = 0.999", _adam_beta2),
    "LoraUnembedDefault": ("TYP-10", "test_constraint_violations_name_the_field", "train_unembed=False", _lora_unembed),
    "SamplingTemperatureDefault": (
        "TYP-12",
        "test_constraint_violations_name_the_field",
        "temperature = 0.7",
        _sampling_temperature,
    ),
    "LearningRateUnchecked": (
        "TYP-3",
        "test_constraint_violations_name_the_field",
        "a negative learning_rate accepted",
        _learning_rate_unchecked,
    ),
    "MutableRequests": (
        "TYP-2",
        "test_request_types_forbid_unknown_fields_and_are_immutable",
        "AdamParams mutable",
        _mutable_requests,
    ),
    "ToIntsFirstChunk": ("TYP-4", "test_token_inputs", "to_ints() of the first chunk only", _to_ints_first_chunk),
    "ToNumpyFloat64": ("TYP-6", "test_tensor_data", "to_numpy() of float32 data is float64", _to_numpy_float64),
    "FromNumpyIntsAsFloats": (
        "TYP-6",
        "test_tensor_data",
        "from_numpy maps ints to float32",
        _from_numpy_ints_as_floats,
    ),
    "WeightsListInt64": ("TYP-7", "test_datum_inputs", "a plain weights list becomes int64", _weights_int64),
    "OutputHasLoss": ("TYP-8", "test_output_types", "ForwardBackwardOutput.loss exists", _output_has_loss),
    "LossNamesReordered": ("TYP-11", "test_output_types", "LOSS_FN_TYPES in another order", _loss_names_reordered),
    "SequenceIdDefault": (
        "TYP-13",
        "test_output_types",
        "SampledSequence.sequence_id defaults to 'seq-0'",
        _sequence_id,
    ),
    "CheckpointKindsSwapped": (
        "TYP-15",
        "test_checkpoint_paths_parse",
        "weights parse as sampler",
        _checkpoint_kinds_swapped,
    ),
    "ResolvedShapeFlat": ("TYP-5", "test_tensor_data", "resolved_shape ignores shape", _resolved_shape_flat),
    "TrainableDefault": (
        "TYP-14",
        "test_information_types",
        "SupportedModel.trainable defaults to False",
        _trainable_default,
    ),
    "InfoFieldMissing": (
        "TYP-1",
        "test_types_have_the_listed_fields",
        "GetInfoResponse lacks is_lora",
        _info_field_missing,
    ),
}

_made: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """The mutant class ``name``, patching the library on first access."""
    if name not in _PATCHES:
        raise AttributeError(name)
    if name not in _made:
        from independent_backend import IndependentBackend

        statement, _, what, patch = _PATCHES[name]
        patch()
        doc = f"{statement}: the library's types are broken ({what}); the provider is the independent backend."
        namespace = {"name": f"mutant-types-{name}", "__doc__": doc, "__module__": __name__, "__qualname__": name}
        _made[name] = type(name, (IndependentBackend,), namespace)
    return _made[name]


MUTANTS: list[Mutant] = [
    Mutant(f"mutants.types:{name}", statement, (f"{TYPES}::{test}",), base=BASE)
    for name, (statement, test, _, _) in _PATCHES.items()
]
