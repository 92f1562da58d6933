"""Futures, ordering, accumulation and chunking through the shared client layer (spec ORD, FB)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import tinker_std as ts

from _support import MODEL, assert_states_equal, logprobs_of, make_service, state_arrays, text_batch

# The mock backend computes in float64; gradients summed in a different order differ by rounding only.
GRAD_ATOL = 1e-12

A = text_batch(["hello world", "tinker"])
B = text_batch(["standard api", "lora adapters!"])
ADAM = ts.AdamParams(learning_rate=1e-2)


def new_client(service: ts.ServiceClient, seed: int = 0) -> ts.TrainingClient:
    return service.create_lora_training_client(base_model=MODEL, rank=4, seed=seed).result()


def test_calls_take_effect_in_submission_order_when_awaited_in_reverse(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        sequential = new_client(service)
        sequential.forward_backward(A, "cross_entropy").result()
        sequential.optim_step(ADAM).result()
        expected = sequential.forward(A).result()

        pipelined = new_client(service)
        futures = [pipelined.forward_backward(A, "cross_entropy"), pipelined.optim_step(ADAM), pipelined.forward(A)]
        results = [f.result() for f in reversed(futures)]
        for got, want in zip(logprobs_of(results[0]), logprobs_of(expected), strict=True):
            np.testing.assert_array_equal(got, want)
        # and the forward really saw the post-step weights
        fresh = new_client(service).forward(A).result()
        assert not np.array_equal(logprobs_of(results[0])[0], logprobs_of(fresh)[0])


def test_double_await_style_and_single_future_style_agree(tmp_path: Path) -> None:
    async def double_await(service: ts.ServiceClient) -> float:
        tc = await service.create_lora_training_client_async(MODEL, rank=4, seed=0)
        fb_future = await tc.forward_backward_async(A, "cross_entropy")
        opt_future = await tc.optim_step_async(ADAM)
        await fb_future
        await opt_future
        out = await (await tc.forward_async(A))
        return out.metrics["loss:sum"]

    with make_service(tmp_path) as service:
        loss_async = asyncio.run(double_await(service))
        tc = new_client(service)
        tc.forward_backward(A, "cross_entropy")
        tc.optim_step(ADAM)
        loss_sync = tc.forward(A).result().metrics["loss:sum"]
    assert loss_async == loss_sync


def test_gradients_accumulate_across_calls_until_optim_step(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        split = new_client(service)
        split.forward_backward(A, "cross_entropy")
        split.forward_backward(B, "cross_entropy")
        split_state = state_arrays(split)

        joined = new_client(service)
        joined.forward_backward(A + B, "cross_entropy")
        joined_state = state_arrays(joined)
        for key in split_state:
            np.testing.assert_allclose(split_state[key], joined_state[key], atol=GRAD_ATOL, rtol=0, err_msg=key)
        assert any(np.abs(v).max() > 0 for k, v in split_state.items() if k.startswith("grads/"))

        split.optim_step(ADAM)
        joined.optim_step(ADAM)
        after_split, after_joined = state_arrays(split), state_arrays(joined)
        for key in after_split:
            np.testing.assert_allclose(after_split[key], after_joined[key], atol=GRAD_ATOL, rtol=0, err_msg=key)
        # optim_step consumed the gradient (FB-5)
        assert all(np.all(v == 0) for k, v in after_split.items() if k.startswith("grads/"))


def test_chunk_size_one_equals_one_call(tmp_path: Path) -> None:
    with make_service(tmp_path) as whole_service, make_service(tmp_path, max_chunk_datums=1) as chunked_service:
        whole, chunked = new_client(whole_service), new_client(chunked_service)
        out_whole = whole.forward_backward(A + B, "cross_entropy").result()
        out_chunked = chunked.forward_backward(A + B, "cross_entropy").result()
        assert out_chunked.metrics["loss:sum"] == pytest.approx(out_whole.metrics["loss:sum"], rel=1e-12)
        for got, want in zip(logprobs_of(out_chunked), logprobs_of(out_whole), strict=True):
            np.testing.assert_array_equal(got, want)
        s_whole, s_chunked = state_arrays(whole), state_arrays(chunked)
        for key in s_whole:
            np.testing.assert_allclose(s_chunked[key], s_whole[key], atol=GRAD_ATOL, rtol=0, err_msg=key)


def test_failed_request_fails_only_its_future_and_blocks_nothing(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = new_client(service)
        tc.save_state("first").result()
        before = state_arrays(tc)
        conflict = tc.save_state("first")  # exists, no overwrite -> fails at execution time
        later = tc.forward(A)
        with pytest.raises(ts.ConflictError):
            conflict.result()
        assert later.result().metrics["loss:sum"] > 0
        assert_states_equal(before, state_arrays(tc))


def test_failing_custom_loss_changes_nothing_and_does_not_poison(tmp_path: Path) -> None:
    def broken(data: list[ts.Datum], logprobs: list[object]) -> tuple[object, dict[str, float]]:
        raise ValueError("boom")

    with make_service(tmp_path) as service:
        tc = new_client(service)
        before = state_arrays(tc)
        with pytest.raises(ts.RequestFailedError) as info:
            tc.forward_backward_custom(A, broken).result()  # type: ignore[arg-type]
        assert info.value.category == "user"
        assert_states_equal(before, state_arrays(tc))
        assert tc.forward_backward(A, "cross_entropy").result().metrics["loss:sum"] > 0


def test_result_on_the_clients_own_loop_raises_instead_of_deadlocking(tmp_path: Path) -> None:
    with make_service(tmp_path) as service:
        tc = new_client(service)
        pending = tc.forward(A)
        pending.result()

        def blocking_loss(data: list[ts.Datum], logprobs: list[object]) -> tuple[object, dict[str, float]]:
            pending.result()  # runs on the client's event loop thread
            raise AssertionError("unreachable")

        with pytest.raises(ts.RequestFailedError) as info:
            tc.forward_backward_custom(A, blocking_loss).result(timeout=30)  # type: ignore[arg-type]
        assert isinstance(info.value.__cause__, RuntimeError)
        assert "deadlock" in str(info.value.__cause__)


def test_custom_loss_equals_builtin_cross_entropy(tmp_path: Path) -> None:
    import torch

    def ce(data: list[ts.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -sum(lp.sum() for lp in logprobs)
        return loss, {"tokens:sum": float(sum(lp.numel() for lp in logprobs))}  # type: ignore[return-value]

    with make_service(tmp_path) as service:
        builtin, custom = new_client(service), new_client(service)
        out_builtin = builtin.forward_backward(A, "cross_entropy").result()
        out_custom = custom.forward_backward_custom(A, ce).result()
        # loss recomputed from float32 logprobs on the client: float32 rounding of the per-token values
        assert out_custom.metrics["loss:sum"] == pytest.approx(out_builtin.metrics["loss:sum"], rel=1e-6)
        assert out_custom.metrics["surrogate_loss:sum"] == pytest.approx(out_builtin.metrics["loss:sum"], rel=1e-6)
        assert out_custom.metrics["tokens:sum"] == sum(d.model_input.length for d in A)
        s_builtin, s_custom = state_arrays(builtin), state_arrays(custom)
        for key in s_builtin:
            if key.startswith("grads/"):
                np.testing.assert_allclose(s_custom[key], s_builtin[key], rtol=1e-6, atol=1e-9, err_msg=key)
