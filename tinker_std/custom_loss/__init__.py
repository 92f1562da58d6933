"""Server-side custom losses (spec 12, CLG): a loss the SDK traced with ``torch.fx`` and uploaded
as plain data (``CreateCustomLossRequest``) is validated against an allow-list of torch, math and
operator functions before it is stored (``validate``), then interpreted as the loss of
``forward_backward`` (``execute``). No code from the request is imported, compiled or evaluated.
"""

from .execute import GraphLoss, check_graph_inputs, graph_loss_fn, run_graph
from .validate import LossGraph, LossInput, validate_loss

__all__ = ["GraphLoss", "LossGraph", "LossInput", "check_graph_inputs", "graph_loss_fn", "run_graph", "validate_loss"]
