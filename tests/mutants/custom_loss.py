"""Mutants of the server-side custom loss statements (spec/12-custom-losses.md, CLG).

The validator and interpreter of uploaded graphs (``tinker_std.custom_loss``) are shared by every
backend behind the server, so each mutant replaces one of their parts (``mutants._mock.PatchingMock``):
a server that ships that bug.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tinker_std.backends.mock import MockBackend
from tinker_std.custom_loss import execute, trace, validate
from tinker_std.training_math import DatumLoss
from tinker_std.types import Datum, ForwardBackwardOutput

from . import Mutant
from ._mock import PatchingMock, replace
from ._patch import replace_everywhere

__all__ = ["MUTANTS"]

GRAPHS = "tinker_std.conformance.test_custom_loss_graphs"


class _Permissive(dict[str, Any]):
    """The allow-list, plus any name it lacks, which runs as a harmless no-op."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key) or (lambda *args, **kwargs: None)


class AnyFunctionAllowedMock(PatchingMock):
    """CLG-1: ``call_function`` targets outside the allow-list are accepted (never run here)."""

    name: ClassVar[str] = "mock-custom-loss-any-function"

    @classmethod
    def patch(cls) -> None:
        replace(validate, "ALLOWED_FUNCTIONS", lambda original: _Permissive(original))


class MeanOverDatumsMock(PatchingMock):
    """CLG-2: the graph loss is averaged over the datums instead of summed."""

    name: ClassVar[str] = "mock-custom-loss-mean"

    @classmethod
    def patch(cls) -> None:
        original = execute.graph_loss_fn
        if getattr(original, "__mutant__", False):
            return

        def graph_loss_fn(graph: Any) -> Any:
            inner = original(graph)

            def loss_fn(data: Any, logprobs: Any) -> Any:
                total, metrics = inner(data, logprobs)
                return total / len(data), metrics

            return loss_fn

        graph_loss_fn.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, graph_loss_fn)


class InputsUncheckedMock(PatchingMock):
    """CLG-3: datums are not checked for the inputs the loss reads."""

    name: ClassVar[str] = "mock-custom-loss-inputs-unchecked"

    @classmethod
    def patch(cls) -> None:
        original = execute.check_graph_inputs
        if getattr(original, "__mutant__", False):
            return

        def check_graph_inputs(graph: Any, data: Any) -> None:
            return None

        check_graph_inputs.__mutant__ = True  # type: ignore[attr-defined]
        replace_everywhere(original, check_graph_inputs)


class OnePassWithoutBackwardMock(MockBackend):
    """CLG-4: the one-pass seam scores the loss but never runs its backward (no gradient)."""

    name: ClassVar[str] = "mock-custom-loss-one-pass-no-backward"

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        out = await super().forward_backward_datum_loss(model_id, data, loss, False)
        return out.model_copy(update={"metrics": {**out.metrics, "surrogate_loss:sum": out.metrics["loss:sum"]}})


class ForwardAccumulatesMock(MockBackend):
    """CLG-5: ``forward`` with a graph loss runs its backward too (accumulates a gradient)."""

    name: ClassVar[str] = "mock-custom-loss-forward-accumulates"

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        out = await super().forward_backward_datum_loss(model_id, data, loss, True)
        if not backward:
            out.metrics.pop("surrogate_loss:sum", None)
        return out


class InProcessUncheckedMock(PatchingMock):
    """CLG-6: in-process ``create_custom_loss`` validates against an allow-list that lets any
    function through (uploads are still checked)."""

    name: ClassVar[str] = "mock-custom-loss-in-process-unchecked"

    @classmethod
    def patch(cls) -> None:
        def make(original: Any) -> Any:
            def validate_loss(name: Any, inputs: Any, graph: Any) -> Any:
                saved = validate.ALLOWED_FUNCTIONS
                validate.ALLOWED_FUNCTIONS = _Permissive(saved)  # type: ignore[misc]
                try:
                    return original(name, inputs, graph)
                finally:
                    validate.ALLOWED_FUNCTIONS = saved  # type: ignore[misc]

            return validate_loss

        replace(trace, "validate_loss", make)


def _m(cls: type, statement: str, test: str) -> Mutant:
    return Mutant(backend=f"mutants.custom_loss:{cls.__name__}", statement=statement, selection=(f"{GRAPHS}::{test}",))


MUTANTS = [
    _m(AnyFunctionAllowedMock, "CLG-1", "test_a_graph_outside_the_allow_list_is_refused_naming_the_node"),
    _m(MeanOverDatumsMock, "CLG-2", "test_a_graph_loss_equals_its_python_definition"),
    _m(InputsUncheckedMock, "CLG-3", "test_inputs_are_checked_and_a_failing_graph_changes_nothing"),
    _m(OnePassWithoutBackwardMock, "CLG-4", "test_a_graph_loss_gives_the_two_pass_result"),
    _m(ForwardAccumulatesMock, "CLG-5", "test_forward_with_a_graph_loss_scores_it_without_gradient"),
    _m(InProcessUncheckedMock, "CLG-6", "test_create_custom_loss_in_process_uses_the_allow_list"),
]
