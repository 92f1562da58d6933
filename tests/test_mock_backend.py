"""The mock backend, driven directly (no client layer): real numbers with stated tolerances.

Here: construction, models and tokenizer; the forward pass and LoRA; gradients and AdamW; checkpoints.
Sampling is in ``tests/test_mock_sampling.py``; the helpers both use are in ``tests/mock_backend_support.py``.

Tolerances: float64 recomputations of the same maths agree to ``1e-12``; values that crossed the
wire as float32 (``forward_backward`` outputs) are compared with ``1e-6``; everything that must be
reproducible (seeded sampling, checkpoint resume, fresh LoRA == base) is compared exactly.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mock_backend_support import (
    MODEL,
    TOKENIZER,
    adapter_of,
    base_sampler,
    datum,
    make_backend,
    new_model,
    reference_logprobs,
    run,
    sample,
    text_data,
    train,
)

from tinker_std.backend import AdapterState, Tokenizer
from tinker_std.backends.mock import LORA_ALPHA, ByteTokenizer, MockBackend, base_weights, forward
from tinker_std.capabilities import OPTIONAL_CAPABILITIES
from tinker_std.checkpoints import CheckpointStore
from tinker_std.errors import BadRequestError, ConflictError, NotFoundError
from tinker_std.types import AdamParams, Datum, LoraConfig, ModelInput, ParsedCheckpointTinkerPath


@pytest.fixture
def backend(tmp_path: Path) -> MockBackend:
    return make_backend(tmp_path)


def state_arrays(state: AdapterState) -> dict[str, np.ndarray]:
    out = {
        f"{kind}/{n}": np.array(v)
        for kind in ("weights", "grads", "exp_avg", "exp_avg_sq")
        for n, v in getattr(state, kind).items()
    }
    out["step"] = np.array(state.step)
    return out


# -- construction, models, tokenizer -----------------------------------------------------------


def test_declarations_and_fast_start(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    b = MockBackend(checkpoint_dir=tmp_path)
    run(b.start())
    assert time.perf_counter() - t0 < 1.0
    assert MockBackend.name == "mock"
    assert MockBackend.capabilities.optional == OPTIONAL_CAPABILITIES
    assert MockBackend.capabilities.tolerance == "mock"
    models = run(b.get_server_capabilities()).supported_models
    tiny = next(m for m in models if m.model_name == MODEL)
    assert tiny.max_context_length == 256 and tiny.trainable and tiny.sampleable
    with pytest.raises(TypeError):
        MockBackend(checkpoint_dir=tmp_path, **{"flux_capacitor": True})


def test_tokenizer() -> None:
    tok = MockBackend().get_tokenizer(MODEL)
    assert isinstance(tok, Tokenizer)
    assert isinstance(tok, ByteTokenizer)
    assert (tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (256, 257, 258)
    text = "héllo ✓"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([104, 105, 256, 257]) == "hi<|eos|><|pad|>"
    assert tok.decode([104, 256, 105, 257], skip_special_tokens=True) == "hi"
    assert tok.decode([0xE2, 0x9C]) == "\ufffd"  # incomplete UTF-8 is replaced, not an error
    with pytest.raises(ValueError):
        tok.decode([258])


def test_unknown_ids_are_not_found(backend: MockBackend) -> None:
    with pytest.raises(NotFoundError, match="mock/tiny"):
        run(backend.create_model("gpt-5", LoraConfig(rank=2)))
    with pytest.raises(NotFoundError, match="mock/tiny"):
        backend.get_tokenizer("gpt-5")
    with pytest.raises(NotFoundError):
        run(backend.create_sampler(base_model="gpt-5"))
    with pytest.raises(NotFoundError):
        run(backend.forward_backward("mock-nope", text_data("ab"), "cross_entropy", {}, True))
    with pytest.raises(NotFoundError):
        run(backend.optim_step("mock-nope", AdamParams()))
    with pytest.raises(NotFoundError):
        sample(backend, "mock-sampler-nope")
    with pytest.raises(NotFoundError):
        run(backend.create_sampler(model_id="mock-nope"))


def test_ids_unique_and_release(backend: MockBackend) -> None:
    ids = {new_model(backend) for _ in range(5)}
    assert len(ids) == 5 and all(re.fullmatch(r"[A-Za-z0-9._:-]+", i) for i in ids)
    model_id = ids.pop()
    sampler_id = run(backend.create_sampler(model_id=model_id)).sampler_id
    run(backend.release_model(model_id))
    run(backend.release_model(model_id))  # idempotent
    with pytest.raises(NotFoundError):
        run(backend.read_state(model_id))
    assert sample(backend, sampler_id, max_tokens=2, seed=0).sequences[0].tokens  # snapshot survives


def test_base_weights_do_not_depend_on_global_rng() -> None:
    first = {k: v.clone() for k, v in base_weights(MODEL).tensors.items()}
    base_weights.cache_clear()
    torch.manual_seed(12345)
    again = base_weights(MODEL).tensors
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(t.requires_grad for t in again.values())


# -- forward pass and LoRA ---------------------------------------------------------------------


def test_forward_matches_reference_implementation(backend: MockBackend) -> None:
    lora = LoraConfig(rank=4, seed=3)
    model_id = run(backend.create_model(MODEL, lora)).model_id
    train(backend, model_id, text_data("hello world", "lorem ipsum"), steps=3, lr=0.05)  # B != 0 now
    adapter = adapter_of(backend, model_id, lora)
    assert all(np.abs(adapter.params[n].numpy()).max() > 1e-3 for n in adapter.params)
    tokens = TOKENIZER.encode("attention is all you need")
    arrays = {n: t.numpy() for n, t in adapter.params.items()}
    expected = reference_logprobs(tokens, arrays, LORA_ALPHA / 4)
    got = torch.log_softmax(forward(base_weights(MODEL), tokens, adapter), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # forward_backward reports the same numbers (as float32) for the target tokens.
    out = run(backend.forward_backward(model_id, [datum(tokens)], "cross_entropy", {}, False))
    wire = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    np.testing.assert_allclose(wire, expected[np.arange(len(tokens) - 1), tokens[1:]], rtol=0, atol=1e-6)
    assert out.metrics["loss:sum"] == pytest.approx(-expected[np.arange(len(tokens) - 1), tokens[1:]].sum(), abs=1e-9)


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"train_attn": False},
        {"train_mlp": False, "train_unembed": False},
        {"train_attn": False, "train_mlp": False},
    ],
)
def test_fresh_lora_is_exactly_the_base_model(backend: MockBackend, flags: dict[str, bool]) -> None:
    lora = LoraConfig(rank=3, seed=11, **flags)
    model_id = run(backend.create_model(MODEL, lora)).model_id
    adapter = adapter_of(backend, model_id, lora)
    expected_modules = [
        m
        for flag, mods in (
            ("train_attn", ["attn.q", "attn.k", "attn.v", "attn.o"]),
            ("train_mlp", ["mlp.gate", "mlp.up", "mlp.down"]),
            ("train_unembed", ["lm_head"]),
        )
        if getattr(lora, flag)
        for m in mods
    ]
    assert list(adapter.params) == [f"{m}.lora_{ab}" for m in expected_modules for ab in "AB"]
    shapes = base_weights(MODEL).config.linear_shapes()
    gen = torch.Generator().manual_seed(11)
    for m in expected_modules:
        out_f, in_f = shapes[m]
        a, b = adapter.params[f"{m}.lora_A"], adapter.params[f"{m}.lora_B"]
        reference_a = torch.nn.init.kaiming_uniform_(
            torch.empty(3, in_f, dtype=torch.float64), a=math.sqrt(5), generator=gen
        )
        assert torch.equal(a, reference_a) and float(a.abs().max()) <= 1 / math.sqrt(in_f)
        assert b.shape == (out_f, 3) and not b.any()
    tokens = TOKENIZER.encode("exactly equal")
    assert torch.equal(forward(base_weights(MODEL), tokens, adapter), forward(base_weights(MODEL), tokens, None))
    # SMP-18: the snapshot sampler of a fresh adapter samples and scores exactly like the base model.
    snapshot = run(backend.create_sampler(model_id=model_id)).sampler_id
    from_snapshot, from_base = (
        sample(backend, s, num_samples=2, prompt_logprobs=True, max_tokens=10, seed=3, stop=[])
        for s in (snapshot, base_sampler(backend))
    )
    assert from_snapshot.prompt_logprobs == from_base.prompt_logprobs
    assert [(q.tokens, q.logprobs) for q in from_snapshot.sequences] == [
        (q.tokens, q.logprobs) for q in from_base.sequences
    ]


def test_lora_seed_controls_init(backend: MockBackend) -> None:
    def weights(seed: int | None) -> dict[str, np.ndarray]:
        return dict(run(backend.read_state(new_model(backend, seed=seed))).weights)  # type: ignore[arg-type]

    a, b, c = weights(1), weights(1), weights(2)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["attn.q.lora_A"], c["attn.q.lora_A"])
    assert not np.array_equal(weights(None)["attn.q.lora_A"], weights(None)["attn.q.lora_A"])


def test_datum_outputs_do_not_depend_on_batch(backend: MockBackend) -> None:
    model_id = new_model(backend)
    d1, d2 = text_data("first datum", "the second, longer datum")
    alone = run(backend.forward_backward(model_id, [d1], "cross_entropy", {}, False)).loss_fn_outputs[0]
    batched = run(backend.forward_backward(model_id, [d2, d1], "cross_entropy", {}, False)).loss_fn_outputs[1]
    assert alone["logprobs"].data == batched["logprobs"].data


def test_soft_targets(backend: MockBackend) -> None:
    lora = LoraConfig(rank=4, seed=5)
    model_id = run(backend.create_model(MODEL, lora)).model_id
    tokens = TOKENIZER.encode("soft")
    targets = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64)
    d = Datum(
        model_input=ModelInput.from_ints(tokens[:3]),
        loss_fn_inputs={"target_tokens": targets, "weights": np.full((3, 2), 0.5, dtype=np.float32)},
    )
    out = run(backend.forward_backward(model_id, [d], "cross_entropy", {}, True)).loss_fn_outputs[0]["logprobs"]
    expected = reference_logprobs(tokens[:3], {}, 1.0)[np.arange(3)[:, None], targets]
    assert out.resolved_shape == [3, 2]
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=0, atol=1e-6)
    assert np.abs(run(backend.read_state(model_id)).grads["lm_head.lora_B"]).max() > 0


# -- gradients and AdamW -----------------------------------------------------------------------


def test_gradients_accumulate_until_optim_step(backend: MockBackend) -> None:
    warmup, part_a, part_b = text_data("warm up"), text_data("abc", "hello"), text_data("xyz!")
    one, two = new_model(backend), new_model(backend)
    for model_id in (one, two):  # one step first so that lora_A gradients are non-zero too
        train(backend, model_id, warmup)
    assert not any(np.any(g) for g in run(backend.read_state(one)).grads.values())
    run(backend.forward_backward(one, part_a, "cross_entropy", {}, True))
    run(backend.forward_backward(one, part_b, "cross_entropy", {}, True))
    run(backend.forward_backward(one, part_b, "cross_entropy", {}, False))  # forward only: no gradient
    run(backend.forward_backward(two, part_a + part_b, "cross_entropy", {}, True))
    g1, g2 = run(backend.read_state(one)).grads, run(backend.read_state(two)).grads
    assert all(np.abs(g1[n]).max() > 0 for n in g1)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=0, atol=1e-12, err_msg=name)


def test_adamw_step_matches_torch(backend: MockBackend) -> None:
    model_id = new_model(backend)
    params = AdamParams(learning_rate=0.01, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.1)
    initial = run(backend.read_state(model_id)).weights
    reference = {n: torch.nn.Parameter(torch.from_numpy(np.array(w))) for n, w in initial.items()}
    opt = torch.optim.AdamW(
        list(reference.values()), lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, foreach=False
    )
    for step in range(2):
        run(backend.forward_backward(model_id, text_data("adam step", "two"), "cross_entropy", {}, True))
        before = run(backend.read_state(model_id))
        for name, p in reference.items():
            p.grad = torch.from_numpy(np.array(before.grads[name]))
        opt.step()
        metrics = run(backend.optim_step(model_id, params)).metrics or {}
        norm = math.sqrt(sum(float((np.array(g) ** 2).sum()) for g in before.grads.values()))
        assert metrics["grad_norm:max"] == pytest.approx(norm, rel=1e-12)
        assert metrics["step:max"] == step + 1
    after = run(backend.read_state(model_id))
    assert after.step == 2 and not any(np.any(g) for g in after.grads.values())
    for name, p in reference.items():
        np.testing.assert_allclose(after.weights[name], p.detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(after.exp_avg[name], opt.state[p]["exp_avg"].numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(after.exp_avg_sq[name], opt.state[p]["exp_avg_sq"].numpy(), rtol=0, atol=1e-12)


def test_read_state_before_any_step(backend: MockBackend) -> None:
    state = run(backend.read_state(new_model(backend)))
    assert state.step == 0
    for kind in ("grads", "exp_avg", "exp_avg_sq"):
        for name, value in getattr(state, kind).items():
            assert value.dtype == np.float64 and value.shape == state.weights[name].shape and not value.any()


# -- checkpoints -------------------------------------------------------------------------------


def test_save_state_and_resume_is_bit_identical(backend: MockBackend, tmp_path: Path) -> None:
    data = text_data("checkpoint me", "and me")
    model_id = new_model(backend)
    train(backend, model_id, data, steps=2, lr=0.02)
    path = ParsedCheckpointTinkerPath.build("run1", "training", "step2")
    run(backend.save_state(model_id, path, overwrite=False))
    meta = CheckpointStore(tmp_path).read_metadata(path)
    assert meta["base_model"] == MODEL and meta["backend"] == "mock" and meta["kind"] == "training"
    assert meta["lora"] == LoraConfig(rank=4, seed=7).model_dump()

    resumed = run(backend.load_model(path, with_optimizer=True))
    assert resumed.model_id != model_id and resumed.base_model == MODEL and resumed.lora.rank == 4
    saved, loaded = (state_arrays(run(backend.read_state(m))) for m in (model_id, resumed.model_id))
    assert saved["step"] == 2 and saved.keys() == loaded.keys()
    for key in saved:
        np.testing.assert_array_equal(loaded[key], saved[key], err_msg=key)
    train(backend, model_id, data, steps=2, lr=0.02)
    train(backend, resumed.model_id, data, steps=2, lr=0.02)
    uninterrupted = state_arrays(run(backend.read_state(model_id)))
    continued = state_arrays(run(backend.read_state(resumed.model_id)))
    for key in uninterrupted:
        np.testing.assert_array_equal(continued[key], uninterrupted[key], err_msg=key)
    assert continued["step"] == 4


def test_load_without_optimizer_and_sampler_weights(backend: MockBackend) -> None:
    model_id = new_model(backend)
    train(backend, model_id, text_data("weights only"), steps=2)
    weights = run(backend.read_state(model_id)).weights
    state_path = ParsedCheckpointTinkerPath.build("run2", "training", "a")
    sampler_path = ParsedCheckpointTinkerPath.build("run2", "sampler", "a")
    run(backend.save_state(model_id, state_path, overwrite=False))
    run(backend.save_weights_for_sampler(model_id, sampler_path, overwrite=False))
    for path in (state_path, sampler_path):
        fresh = run(backend.read_state(run(backend.load_model(path, with_optimizer=False)).model_id))
        assert fresh.step == 0 and not any(v.any() for v in fresh.exp_avg.values())
        assert all(np.array_equal(fresh.weights[n], weights[n]) for n in weights)
    with pytest.raises(BadRequestError) as info:
        run(backend.load_model(sampler_path, with_optimizer=True))
    assert info.value.field == "path"
    with pytest.raises(NotFoundError):
        run(backend.load_model(ParsedCheckpointTinkerPath.build("run2", "training", "missing"), False))
    with pytest.raises(BadRequestError):  # a sampler path given to save_state
        run(backend.save_state(model_id, sampler_path, overwrite=True))


def test_save_conflict(backend: MockBackend) -> None:
    model_id = new_model(backend)
    path = ParsedCheckpointTinkerPath.build("run3", "training", "x")
    run(backend.save_state(model_id, path, overwrite=False))
    with pytest.raises(ConflictError):
        run(backend.save_state(model_id, path, overwrite=False))
    run(backend.save_state(model_id, path, overwrite=True))
    sampler_path = ParsedCheckpointTinkerPath.build("run3", "sampler", "x")
    run(backend.save_weights_for_sampler(model_id, sampler_path, overwrite=False))
    with pytest.raises(ConflictError):
        run(backend.save_weights_for_sampler(model_id, sampler_path, overwrite=False))
