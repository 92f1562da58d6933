"""``fast/forward_swap.py``: a module's forward swapped for a while, restored on exit, stacked when nested."""

from __future__ import annotations

import pytest
import torch

from tinker_std.backends.torch.fast.forward_swap import swapped_forward, swapped_forwards


def test_swaps_nest_and_unwind_in_order() -> None:
    layer = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    plain = layer(x)

    def outer(t: torch.Tensor) -> torch.Tensor:
        return torch.full((t.shape[0], 2), 1.0)

    def inner(t: torch.Tensor) -> torch.Tensor:
        return torch.full((t.shape[0], 2), 2.0)

    assert swapped_forward(layer) is None
    with swapped_forwards([(layer, outer)]) as count:
        assert count == 1 and swapped_forward(layer) is outer
        assert torch.equal(layer(x), outer(x))
        with swapped_forwards([(layer, inner)]):
            assert torch.equal(layer(x), inner(x))
        assert swapped_forward(layer) is outer, "the inner swap's exit must bring back the outer one"
        assert torch.equal(layer(x), outer(x))
    assert swapped_forward(layer) is None
    assert torch.equal(layer(x), plain)
    assert "forward" not in dict(layer.named_children()), "a swapped forward must not register as a child"


def test_an_error_inside_or_while_swapping_restores_everything() -> None:
    layers = [torch.nn.Linear(2, 2) for _ in range(3)]

    def zero(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    with pytest.raises(RuntimeError, match="inside"), swapped_forwards((m, zero) for m in layers):
        raise RuntimeError("inside")
    assert all(swapped_forward(m) is None for m in layers)

    def failing():  # type: ignore[no-untyped-def]
        yield layers[0], zero
        raise RuntimeError("while swapping")

    with pytest.raises(RuntimeError, match="while swapping"), swapped_forwards(failing()):
        pass
    assert all(swapped_forward(m) is None for m in layers)
