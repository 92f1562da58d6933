"""Mutants of the server-side custom loss statements (spec/12-custom-losses.md, CLG).

The validator and interpreter of uploaded graphs (``tinker_std.custom_loss``) are shared by every
backend behind the server, so each mutant replaces one of their parts (``mutants._mock.PatchingMock``):
a server that ships that bug.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tinker_std.custom_loss import execute, validate

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


def _m(cls: type, statement: str, test: str) -> Mutant:
    return Mutant(backend=f"mutants.custom_loss:{cls.__name__}", statement=statement, selection=(f"{GRAPHS}::{test}",))


MUTANTS = [
    _m(AnyFunctionAllowedMock, "CLG-1", "test_a_graph_outside_the_allow_list_is_refused_naming_the_node"),
    _m(MeanOverDatumsMock, "CLG-2", "test_a_graph_loss_equals_its_python_definition"),
    _m(InputsUncheckedMock, "CLG-3", "test_inputs_are_checked_and_a_failing_graph_changes_nothing"),
]
