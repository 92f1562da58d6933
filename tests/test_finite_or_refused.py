"""Finite or refused (issue 21 item 3; spec FB-15, OPT-10): the issue's reproductions, in process.

* ``weights=[3.4e38]*5`` with ``cross_entropy`` on torch (float32): the loss overflows to inf and
  used to be accepted; ``optim_step`` then applied a NaN step and every later loss was NaN;
* ``importance_sampling`` with ``logprobs=[-1e4]*5`` on mock: ratio ``exp(1e4)`` = inf;
* weights of 1e30 on torch: a finite loss whose gradient norm overflows float32;
* ``engine.adamw_step`` given a non-finite gradient: refused, weights, moments and step unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import tinker_std as ts
from tinker_std.training_math import adamw_step

ADAM = ts.AdamParams(learning_rate=1e-2)


def _ce(tokens: list[int], weight: float | None = None) -> ts.Datum:
    inputs: dict[str, object] = {"target_tokens": tokens[1:]}
    if weight is not None:
        inputs["weights"] = [weight] * (len(tokens) - 1)
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)  # type: ignore[arg-type]


def _finite_forward(tc: ts.TrainingClient, probe: list[ts.Datum]) -> bool:
    out = tc.forward(probe, "cross_entropy").result()
    return bool(np.isfinite(out.metrics["loss:sum"])) and all(
        np.isfinite(o["logprobs"].to_numpy()).all() for o in out.loss_fn_outputs
    )


@pytest.mark.parametrize("bad", ["inf", "nan"])
def test_adamw_step_refuses_a_non_finite_gradient_and_changes_nothing(bad: str) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.AdamW(params, foreach=False)
    for p in params:
        p.grad = torch.ones_like(p)
    adamw_step(opt, ADAM)  # moments and step exist
    weights = [p.detach().clone() for p in params]
    moments = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    params[0].grad = torch.tensor([1.0, float(bad), 2.0], dtype=torch.float64)
    params[1].grad = torch.ones(2)
    with pytest.raises(ts.NonFiniteError) as info:
        adamw_step(opt, ADAM)
    assert info.value.field == "gradient"
    for p, w, m in zip(params, weights, moments, strict=True):
        assert torch.equal(p.detach(), w), "OPT-10: the refused step moved a weight"
        for key, value in m.items():
            assert torch.equal(opt.state[p][key], value), f"OPT-10: the refused step changed {key}"
        assert p.grad is None, "OPT-10: the unusable gradient must be discarded"
    out = adamw_step(opt, ADAM)  # training goes on
    assert out.metrics["step:max"] == 2.0 and out.metrics["grad_norm:max"] == 0.0


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path))
    yield service
    service.close()


def test_mock_importance_ratio_overflow_is_refused_before_any_gradient(mock: ts.ServiceClient) -> None:
    tc = mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    tokens = [5, 9, 14, 3, 77, 12]
    bad = ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "advantages": [1.0] * 5, "logprobs": [-1e4] * 5},
    )
    with pytest.raises(ts.NonFiniteError) as info:
        tc.forward_backward([bad], "importance_sampling").result()
    assert info.value.field == "loss_fn_inputs" and "importance_sampling" in str(info.value)
    grads = tc.read_state().result().grads
    assert all(not np.any(g) for g in grads.values()), "FB-15: a refused call accumulated a gradient"
    tc.optim_step(ADAM).result()
    assert _finite_forward(tc, [_ce(tokens)])


@pytest.fixture(scope="module")
def torch_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(backend="torch", checkpoint_dir=str(tmp_path_factory.mktemp("ckpt")))
    yield service
    service.close()


def test_torch_overflowing_cross_entropy_weights_are_refused(torch_service: ts.ServiceClient) -> None:
    tc = torch_service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result()
    tok = tc.get_tokenizer()
    tokens = tok.encode("The quick brown fox jumps over")[:6]
    probe = [_ce(tok.encode("Paris is the capital of France."))]
    before = tc.forward(probe, "cross_entropy").result().metrics["loss:sum"]
    with pytest.raises(ts.NonFiniteError):
        tc.forward_backward([_ce(tokens, 3.4e38)], "cross_entropy").result()
    tc.optim_step(ADAM).result()  # no gradient was accumulated: with m = 0 the weights do not move
    assert tc.forward(probe, "cross_entropy").result().metrics["loss:sum"] == before
    # 1e30: the loss fits in float32 but the gradient norm does not -> the step is refused
    refused = 0
    try:
        tc.forward_backward([_ce(tokens, 1e30)], "cross_entropy").result()
    except ts.NonFiniteError:
        refused += 1
    try:
        tc.optim_step(ADAM).result()
    except ts.NonFiniteError as exc:
        assert exc.field == "gradient"
        refused += 1
    assert refused == 1, "weights of 1e30 must be refused once, by forward_backward or by optim_step"
    assert tc.forward(probe, "cross_entropy").result().metrics["loss:sum"] == before, "OPT-10: weights moved"
    tc.forward_backward(probe, "cross_entropy").result()  # the adapter still trains, finitely
    tc.optim_step(ADAM).result()
    assert _finite_forward(tc, probe)


def test_typed_errors_survive_pickling() -> None:
    """fsdp ranks send a job's error back inside a pickled result list: a ``NonFiniteError``
    (``BadRequestError(field, problem)``) used to fail to unpickle (``TypeError: missing 'problem'``)
    and reached the user as a server ``RequestFailedError``."""
    import pickle

    for error in (ts.NonFiniteError("loss_fn_inputs", "inf"), ts.CorruptCheckpointError("tinker://r/weights/n", "x")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)
