"""Graph losses in one pass on the torch engine (spec CLG-4), ``forward`` with a graph loss (CLG-5),
and the in-process ``ServiceClient.create_custom_loss`` (CLG-6), on the torch backend's tiny
model (real transformers + peft LoRA, float32 on the CPU).

The reference for the one-pass seam is the same backend with the seam switched off
(``one_pass_datum_loss = False``: the client layer's two-pass surrogate, FB-11). Both clients start
from the same seed; loss, metrics, logprobs, the accumulated LoRA gradient and the weights after
one ``optim_step`` must agree within rtol 1e-5 + atol 1e-6 (the maths is the same; the passes
differ in the order of float32 sums only, e.g. the two-pass head skips zero-weight positions). The
backends count their calls, so the test also shows the one-pass client made a single engine call
(one forward + one backward) where the reference made two (a forward and a forward_backward).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.backends.torch import TorchBackend
from tinker_std.training_math import DatumLoss
from tinker_std.types import Datum, ForwardBackwardOutput

RTOL, ATOL = 1e-5, 1e-6


class CountingTorch(TorchBackend):
    """The torch backend, counting the training calls the client layer makes."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[str] = []

    async def forward_backward(self, model_id: str, data: list[Datum], *args: Any, **kwargs: Any) -> Any:
        self.calls.append("forward_backward")
        return await super().forward_backward(model_id, data, *args, **kwargs)

    async def forward_backward_datum_loss(
        self, model_id: str, data: list[Datum], loss: DatumLoss, backward: bool
    ) -> ForwardBackwardOutput:
        self.calls.append("datum_loss")
        return await super().forward_backward_datum_loss(model_id, data, loss, backward)


class TwoPassTorch(CountingTorch):
    """The same engine without the seam: graph losses take the two-pass path."""

    one_pass_datum_loss: ClassVar[bool] = False


def pairwise(logprobs: Any, ref_logprobs: Any, sign: Any, beta: Any) -> Any:
    margin = ((logprobs - ref_logprobs) * sign).sum()
    loss = -torch.nn.functional.logsigmoid(beta * margin) + 0.01 * torch.exp(logprobs).mean()
    return loss, {"custom/margin:mean": margin, "custom/tokens:sum": (sign != 0).sum().to(torch.float32)}


RANKS = {"logprobs": 1, "ref_logprobs": 1, "sign": 1, "beta": 0}


def _data() -> list[ts.Datum]:
    rows = [([1, 5, 9, 14, 3, 7], [0.0, 1.0, 1.0, -1.0, -1.0], 0.5), ([4, 4, 8, 2, 11], [0.0, 0.0, 1.0, -1.0], 2.0)]
    return [
        ts.Datum(
            model_input=ts.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tokens[1:],
                "ref_logprobs": ts.TensorData(data=[-2.0 - 0.1 * i for i in range(len(sign))], dtype="float32"),
                "sign": ts.TensorData(data=sign, dtype="float32"),
                "beta": ts.TensorData(data=[beta], dtype="float32", shape=[]),
            },
        )
        for tokens, sign, beta in rows
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ts.ServiceClient, ts.ServiceClient]]:
    root = tmp_path_factory.mktemp("one-pass")
    one = ts.ServiceClient(backend=CountingTorch(checkpoint_dir=str(root / "one")))
    two = ts.ServiceClient(backend=TwoPassTorch(checkpoint_dir=str(root / "two")))
    yield one, two
    one.close()
    two.close()


def _base(service: ts.ServiceClient) -> str:
    name = service.get_server_capabilities().supported_models[0].model_name
    assert name is not None
    return name


def _close(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=f"{what} {key}")


def test_one_pass_equals_the_two_pass_path(services: tuple[ts.ServiceClient, ts.ServiceClient]) -> None:
    one_svc, two_svc = services
    one_be, two_be = one_svc.backend, two_svc.backend
    assert isinstance(one_be, CountingTorch) and isinstance(two_be, TwoPassTorch)
    h_one = one_svc.create_custom_loss(pairwise, RANKS).result()
    h_two = two_svc.create_custom_loss(pairwise, RANKS).result()
    one = one_svc.create_lora_training_client(base_model=_base(one_svc), rank=4, seed=3).result()
    two = two_svc.create_lora_training_client(base_model=_base(two_svc), rank=4, seed=3).result()
    data = _data()
    one_be.calls.clear()
    two_be.calls.clear()
    out_1 = one.forward_backward_custom(data, h_one).result()
    out_2 = two.forward_backward_custom(data, h_two).result()
    assert one_be.calls == ["datum_loss"], "the one-pass backend ran more than its own pass"
    assert two_be.calls == ["forward_backward", "forward_backward"], "the reference did not take two passes"
    assert out_1.metrics.keys() == out_2.metrics.keys()
    for key in out_2.metrics:
        assert out_1.metrics[key] == pytest.approx(out_2.metrics[key], rel=RTOL, abs=ATOL), key
    assert out_1.metrics["custom/tokens:sum"] == 6.0
    lps = [o["logprobs"].to_torch() for o in out_2.loss_fn_outputs]
    for a, b in zip(out_1.loss_fn_outputs, lps, strict=True):
        np.testing.assert_allclose(a["logprobs"].to_numpy(), b.numpy(), rtol=RTOL, atol=ATOL)
    # the loss value, independently: `pairwise` evaluated by torch on the returned logprobs
    expected = sum(
        float(pairwise(lp, d.loss_fn_inputs["ref_logprobs"].to_torch(), d.loss_fn_inputs["sign"].to_torch(),
                       d.loss_fn_inputs["beta"].to_torch().reshape(()))[0])
        for lp, d in zip(lps, data, strict=True)
    )  # fmt: skip
    assert out_1.metrics["loss:sum"] == pytest.approx(expected, rel=RTOL, abs=ATOL)
    s1, s2 = one.read_state().result(), two.read_state().result()
    assert any(np.abs(g).max() > 1e-4 for g in s2.grads.values()), "the loss left no gradient"
    _close(dict(s1.grads), dict(s2.grads), "gradient")
    one.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
    two.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
    _close(dict(one.read_state().result().weights), dict(two.read_state().result().weights), "weights")


@pytest.mark.parametrize("which", ["one", "two"])
def test_forward_with_a_graph_loss_scores_without_gradient(
    services: tuple[ts.ServiceClient, ts.ServiceClient], which: str
) -> None:
    svc = services[0] if which == "one" else services[1]
    handle = svc.create_custom_loss(pairwise, RANKS).result()
    scored = svc.create_lora_training_client(base_model=_base(svc), rank=4, seed=5).result()
    trained = svc.create_lora_training_client(base_model=_base(svc), rank=4, seed=5).result()
    out_f = scored.forward(_data(), "custom", {"loss_id": handle.loss_id}).result()
    out_b = trained.forward_backward(_data(), "custom", {"loss_id": handle.loss_id}).result()
    assert set(out_f.metrics) == {"loss:sum", "custom/margin:mean", "custom/tokens:sum"}
    for key in out_f.metrics:
        assert out_f.metrics[key] == pytest.approx(out_b.metrics[key], rel=RTOL, abs=ATOL), key
    assert all(not np.any(g) for g in scored.read_state().result().grads.values()), "forward left a gradient"
    assert any(np.any(g) for g in trained.read_state().result().grads.values())
    with pytest.raises(ts.BadRequestError) as err:
        scored.forward(_data(), "custom", {"loss_id": handle.loss_id, "beta": 1.0})
    assert err.value.field == "loss_fn_config.beta"


def test_create_custom_loss_refuses_by_name_before_keeping_anything(tmp_path: Path) -> None:
    with ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path)) as svc:

        def leaky(logprobs: Any) -> Any:
            return (torch.bernoulli(logprobs.exp()) * logprobs).sum(), {}

        with pytest.raises(ts.BadRequestError) as err:
            svc.create_custom_loss(leaky, {"logprobs": 1})
        assert err.value.field == "graph.nodes[2] ('bernoulli')" and "torch.bernoulli" in str(err.value)

        def branching(logprobs: Any) -> Any:
            if logprobs.sum() > 0:  # data-dependent control flow cannot be traced
                return logprobs.sum(), {}
            return -logprobs.sum(), {}

        with pytest.raises(ts.BadRequestError) as err:
            svc.create_custom_loss(branching, {"logprobs": 1})
        assert err.value.field == "fn"
        with pytest.raises(ts.BadRequestError) as err:
            svc.create_custom_loss(pairwise, {"logprobs": 1, "sign": 1})
        assert err.value.field == "input_ranks"
        assert svc.session.custom_losses._graphs == {}, "a refused loss was kept"
        handle = svc.create_custom_loss(pairwise, RANKS).result()
        assert handle.loss_id == f"{handle.session_id}:loss:0"
        with pytest.raises(ts.NotFoundError):
            tc = svc.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
            tc.forward(_data(), "custom", {"loss_id": f"{handle.session_id}:loss:7"})


def test_the_handle_matches_the_sdks(tmp_path: Path) -> None:
    sdk = pytest.importorskip("tinker")
    from tinker.lib.public_interfaces.custom_loss import encode_graph, trace_loss

    from tinker_std.custom_loss.trace import encode_loss

    name, inputs, graph, _module = encode_loss(pairwise, RANKS)
    theirs = trace_loss(pairwise, RANKS, "s")
    assert name == theirs.name
    assert inputs == [i.model_dump() for i in theirs.inputs]
    assert graph == encode_graph(theirs).model_dump(mode="json"), "the in-process encoding differs from the SDK's"
    with ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path)) as svc:
        handle = svc.create_custom_loss(pairwise, RANKS).result()
    assert {f for f in vars(handle) if not f.startswith("_")} == {f for f in vars(theirs) if not f.startswith("_")}, (
        "the handle's fields differ from the SDK's LossHandle"
    )
    assert sdk is not None


@pytest.mark.slow
def test_fsdp_runs_the_graph_loss_in_its_ranks_pass(tmp_path: Path) -> None:
    """fsdp runs the torch engine on each rank: the per-datum loss travels with the job (pickled)
    and each rank applies it to its rows; gradients are reduced as for a built-in loss."""
    fsdp = ts.ServiceClient(backend="fsdp", world_size=2, checkpoint_dir=str(tmp_path / "fsdp"))
    ref = ts.ServiceClient(backend=TwoPassTorch(checkpoint_dir=str(tmp_path / "ref")))
    try:
        assert type(fsdp.backend).one_pass_datum_loss
        base = _base(fsdp)
        a = fsdp.create_lora_training_client(base_model=base, rank=4, seed=3).result()
        b = ref.create_lora_training_client(base_model=base, rank=4, seed=3).result()
        out_a = a.forward_backward_custom(_data(), fsdp.create_custom_loss(pairwise, RANKS).result()).result()
        out_b = b.forward_backward_custom(_data(), ref.create_custom_loss(pairwise, RANKS).result()).result()
        for key in out_b.metrics:
            assert out_a.metrics[key] == pytest.approx(out_b.metrics[key], rel=RTOL, abs=ATOL), key
        # two ranks sum their partial gradients: float32 sums in another order than one process,
        # so the bound is relative to the gradient's scale (max |g| about 5 here, differences ~5e-6)
        ga, gb = a.read_state().result().grads, b.read_state().result().grads
        scale = max(float(np.abs(g).max()) for g in gb.values())
        for key in gb:
            np.testing.assert_allclose(ga[key], gb[key], rtol=1e-4, atol=2e-6 * scale, err_msg=f"gradient {key}")
    finally:
        fsdp.close()
        ref.close()


def overflowing(logprobs: Any) -> Any:
    return (logprobs * 1e30 * 1e30).sum(), {}


@pytest.mark.parametrize("which", ["one", "two"])
def test_a_non_finite_graph_loss_is_refused_on_both_paths(
    services: tuple[ts.ServiceClient, ts.ServiceClient], which: str
) -> None:
    """FB-15 on either path: a loss that overflows float32 is a ``NonFiniteError`` and leaves no gradient."""
    svc = services[0] if which == "one" else services[1]
    handle = svc.create_custom_loss(overflowing, {"logprobs": 1}).result()
    tc = svc.create_lora_training_client(base_model=_base(svc), rank=4, seed=1).result()
    with pytest.raises(ts.NonFiniteError):
        tc.forward_backward_custom(_data(), handle).result()
    assert all(not np.any(g) for g in tc.read_state().result().grads.values()), "a refused loss left a gradient"
