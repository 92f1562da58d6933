"""Public Hypothesis strategies for tinker-std requests, and the suite's settings profile.

Every strategy takes the sizes it needs (``vocab_size``, ``max_context_length``) explicitly, so it
works for any backend. Floats are drawn as float32 values (what ``TensorData`` stores).

* ``token_sequences``, ``ce_datums``, ``rl_datums``, ``soft_target_datums``, ``loss_datums``,
  ``loss_configs``, ``batches``: valid training inputs (weights include negative and zero values);
* ``adam_params``, ``sampling_params``: valid hyperparameters;
* ``malformed_requests``: invalid requests, each paired with the error type and ``field``
  (ERR-3) the spec prescribes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import tinker_std as ts

from . import plugin

__all__ = [
    "ALL_LOSSES",
    "REQUIRED_LOSSES",
    "MalformedRequest",
    "adam_params",
    "batches",
    "ce_datums",
    "conformance_settings",
    "loss_configs",
    "loss_datums",
    "malformed_requests",
    "rl_datums",
    "sampling_params",
    "soft_target_datums",
    "token_sequences",
]

F = TypeVar("F", bound=Callable[..., Any])

REQUIRED_LOSSES = ("cross_entropy", "importance_sampling", "ppo")
ALL_LOSSES = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo")
MAX_LEN = 12


def conformance_settings(fn: F) -> F:
    """Hypothesis settings of the suite: ``--tinker-max-examples`` examples, no deadline,
    derandomized (reproducible runs), no example database."""
    return settings(
        max_examples=plugin.MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(fn)


def _f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


def token_sequences(vocab_size: int, min_size: int = 2, max_size: int = MAX_LEN + 1) -> st.SearchStrategy[list[int]]:
    """Lists of token ids in ``[0, vocab_size)``."""
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_size, max_size=max_size)


def _weights(n: int) -> st.SearchStrategy[list[float]]:
    """Real weights including zero, negative ones and ones above 1 (LOSS-15)."""
    return st.lists(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5]), _f32(-3.0, 3.0)), min_size=n, max_size=n)


@st.composite
def _inputs_and_targets(draw: st.DrawFn, vocab_size: int, max_len: int) -> tuple[list[int], list[int]]:
    """``(model_input tokens, target_tokens)``: shifted next tokens, or arbitrary targets (ALN-2)."""
    seq = draw(token_sequences(vocab_size, 2, max_len + 1))
    tokens, targets = seq[:-1], seq[1:]
    if draw(st.booleans()):
        targets = draw(st.lists(st.integers(0, vocab_size - 1), min_size=len(tokens), max_size=len(tokens)))
    return tokens, targets


@st.composite
def ce_datums(
    draw: st.DrawFn, vocab_size: int, max_len: int = MAX_LEN, weights: Literal["any", "none", "given"] = "any"
) -> ts.Datum:
    """Cross-entropy datums, with random real weights (or none, meaning ones)."""
    tokens, targets = draw(_inputs_and_targets(vocab_size, max_len))
    inputs: dict[str, Any] = {"target_tokens": targets}
    if weights == "given" or (weights == "any" and draw(st.booleans())):
        inputs["weights"] = draw(_weights(len(tokens)))
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


@st.composite
def rl_datums(
    draw: st.DrawFn, vocab_size: int, max_len: int = MAX_LEN, loss_fn: str = "importance_sampling"
) -> ts.Datum:
    """RL datums: sampler logprobs in [-6, 0], advantages in [-2, 2] (zeros included), plus the
    optional inputs of ``loss_fn`` (per-position clip bounds, the GSPO ratio mask)."""
    tokens, targets = draw(_inputs_and_targets(vocab_size, max_len))
    n = len(tokens)
    inputs: dict[str, Any] = {
        "target_tokens": targets,
        "logprobs": draw(st.lists(_f32(-6.0, 0.0), min_size=n, max_size=n)),
        "advantages": draw(st.lists(st.one_of(st.just(0.0), _f32(-2.0, 2.0)), min_size=n, max_size=n)),
    }
    if loss_fn in ("ppo", "cispo", "gspo"):
        if draw(st.booleans()):
            inputs["clip_low_threshold"] = draw(st.lists(_f32(0.0, 1.0), min_size=n, max_size=n))
        if draw(st.booleans()):
            inputs["clip_high_threshold"] = draw(st.lists(_f32(1.0, 3.0), min_size=n, max_size=n))
    if loss_fn == "gspo" and draw(st.booleans()):
        inputs["sequence_ratio_mask"] = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


@st.composite
def soft_target_datums(draw: st.DrawFn, vocab_size: int, max_len: int = MAX_LEN, max_k: int = 3) -> ts.Datum:
    """Cross-entropy datums with ``(N, K)`` targets and, optionally, ``(N, K)`` weights (LOSS-12)."""
    tokens = draw(token_sequences(vocab_size, 1, max_len))
    n, k = len(tokens), draw(st.integers(1, max_k))
    targets = np.array(draw(st.lists(st.integers(0, vocab_size - 1), min_size=n * k, max_size=n * k)), np.int64)
    inputs: dict[str, Any] = {"target_tokens": targets.reshape(n, k)}
    if draw(st.booleans()):
        inputs["weights"] = np.array(draw(_weights(n * k)), np.float32).reshape(n, k)
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


def loss_datums(loss_fn: str, vocab_size: int, max_len: int = MAX_LEN) -> st.SearchStrategy[ts.Datum]:
    """Valid datums for ``loss_fn``."""
    if loss_fn == "cross_entropy":
        return ce_datums(vocab_size, max_len)
    return rl_datums(vocab_size, max_len, loss_fn)


def batches(
    datums: st.SearchStrategy[ts.Datum], min_size: int = 1, max_size: int = 4
) -> st.SearchStrategy[list[ts.Datum]]:
    return st.lists(datums, min_size=min_size, max_size=max_size)


def loss_configs(loss_fn: str) -> st.SearchStrategy[dict[str, float] | None]:
    """``None`` or a config with some of the loss's keys (LOSS-11)."""
    if loss_fn in ("ppo", "cispo", "gspo"):
        keys: dict[str, st.SearchStrategy[float]] = {
            "clip_low_threshold": _f32(0.0, 1.0),
            "clip_high_threshold": _f32(1.0, 3.0),
        }
    elif loss_fn == "dro":
        keys = {"beta": _f32(0.0, 1.0)}
    else:
        return st.none()
    return st.one_of(st.none(), st.fixed_dictionaries({}, optional=keys))


@st.composite
def adam_params(draw: st.DrawFn, max_lr: float = 0.05) -> ts.AdamParams:
    """AdamParams covering weight decay, clipping (on and off) and various betas, kept
    well-conditioned: ``beta2 = 0`` only with ``eps = 1e-3``. With ``beta2 = 0`` and a tiny ``eps``
    a step with a zero gradient divides ``m`` by ``eps`` (weights of ~1e9 after one step), which
    is correct AdamW but leaves later gradients and logprobs meaningless; the check itself stays
    valid there (TOL-5), and ``tests/test_conformance_tolerances.py`` covers that corner."""
    beta2 = draw(st.sampled_from([0.0, 0.95, 0.999]))
    return ts.AdamParams(
        learning_rate=draw(st.one_of(st.just(0.0), st.floats(1e-4, max_lr))),
        beta1=draw(st.sampled_from([0.0, 0.5, 0.9])),
        beta2=beta2,
        eps=1e-3 if beta2 == 0.0 else draw(st.sampled_from([1e-12, 1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.01, 0.5])),
        grad_clip_norm=draw(st.sampled_from([0.0, 1e-3, 0.1, 100.0])),
    )


def sampling_params(
    vocab_size: int, max_tokens: int = 6, stop: bool = True, seed: bool = True
) -> st.SearchStrategy[ts.SamplingParams]:
    """SamplingParams with ``max_tokens`` set (1..``max_tokens``), temperatures including 0, and
    top-k / top-p filters; ``stop`` of every kind when ``stop``."""
    stops: st.SearchStrategy[Any] = st.none()
    if stop:
        stops = st.one_of(
            st.none(),
            st.just([]),
            st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=3),
            st.sampled_from(["\n", "e", "ab"]),
            st.lists(st.sampled_from(["a", "the", "."]), min_size=1, max_size=2),
        )
    return st.builds(
        ts.SamplingParams,
        max_tokens=st.integers(1, max_tokens),
        seed=st.one_of(st.none(), st.integers(0, 2**31)) if seed else st.none(),
        stop=stops,
        temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
        top_k=st.sampled_from([-1, 1, 5, 50]),
        top_p=st.sampled_from([1.0, 0.9, 0.3]),
    )


# -- malformed requests ----------------------------------------------------------------------------

Target = Literal["training", "sampling"]


@dataclass(frozen=True)
class MalformedRequest:
    """An invalid request: ``invoke(client)`` makes the call (a ``TrainingClient`` or a
    ``SamplingClient`` per ``target``); it must fail with ``error`` whose ``field`` is one of
    ``fields``. Validation failures (ORD-5) are raised by the call itself when ``from_call``."""

    description: str
    target: Target
    invoke: Callable[[Any], Any]
    error: type[ts.TinkerError]
    fields: tuple[str, ...]
    statements: tuple[str, ...]
    from_call: bool = True

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"MalformedRequest({self.description!r}, expect {self.error.__name__} field {self.fields[0]!r})"


def _datum(tokens: list[int], **inputs: Any) -> ts.Datum:
    return ts.Datum(model_input=ts.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


@st.composite
def _bad_training(draw: st.DrawFn, vocab_size: int, max_context_length: int) -> MalformedRequest:
    v = vocab_size
    good = draw(st.lists(ce_datums(v, 6, "none"), min_size=0, max_size=2))
    i = len(good)  # index of the bad datum
    n = draw(st.integers(1, 6))
    tokens = draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n))
    targets = draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n))
    rl: dict[str, Sequence[float]] = {"target_tokens": targets, "logprobs": [-1.0] * n, "advantages": [1.0] * n}
    rl_loss = draw(st.sampled_from(["importance_sampling", "ppo"]))
    bad_value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    kind = draw(
        st.sampled_from(
            [
                "empty data",
                "not a datum",
                "unknown loss",
                "missing target_tokens",
                "missing rl input",
                "extra input",
                "target length",
                "weights length",
                "target dtype",
                "weights dtype",
                "target id >= V",
                "input id >= V",
                "empty model input",
                "too long",
                "non-finite input",
                "unknown config key",
                "non-finite config",
                "soft targets for an RL loss",
                "rl input shape",
                "bad checkpoint name",
            ]
        )
    )
    p = f"data[{i}]"

    def fb(data: list[Any], loss_fn: str = "cross_entropy", config: dict[str, Any] | None = None) -> Callable[..., Any]:
        forward = draw(st.booleans())
        if forward:
            return lambda tc: tc.forward(data, loss_fn, config)
        return lambda tc: tc.forward_backward(data, loss_fn, config)

    def req(
        invoke: Callable[..., Any],
        field: str,
        *statements: str,
        error: type[ts.TinkerError] = ts.BadRequestError,
        fields: tuple[str, ...] = (),
    ) -> MalformedRequest:
        return MalformedRequest(kind, "training", invoke, error, (field, *fields), ("ERR-2", "ERR-3", *statements))

    if kind == "empty data":
        return req(fb([]), "data", "FB-8")
    if kind == "not a datum":
        return req(fb([*good, {"model_input": tokens}]), p, "FB-8")
    if kind == "unknown loss":
        name = draw(st.sampled_from(["stable-reinforce", "custom", "mse", "CROSS_ENTROPY", ""]))
        return req(fb([*good, _datum(tokens, target_tokens=targets)], name), "loss_fn", "LOSS-8")
    if kind == "missing target_tokens":
        return req(fb([*good, _datum(tokens, weights=[1.0] * n)]), f"{p}.loss_fn_inputs.target_tokens", "LOSS-10")
    if kind == "missing rl input":
        key = draw(st.sampled_from(["logprobs", "advantages"]))
        inputs = {k: val for k, val in rl.items() if k != key}
        return req(fb([_datum(tokens, **inputs)], rl_loss), "data[0].loss_fn_inputs." + key, "LOSS-10")
    if kind == "extra input":
        key = draw(st.sampled_from(["advantages", "logprobs", "clip_low_threshold"]))
        datum = _datum(tokens, target_tokens=targets, **{key: [0.5] * n})
        return req(fb([*good, datum]), f"{p}.loss_fn_inputs.{key}", "LOSS-10")
    if kind == "target length":
        m = draw(st.sampled_from([n - 1, n + 1, n + 3]))
        datum = _datum(tokens, target_tokens=[0] * max(m, 0))
        return req(fb([*good, datum]), f"{p}.loss_fn_inputs.target_tokens", "ALN-1", "ALN-3")
    if kind == "weights length":
        m = draw(st.sampled_from([n - 1, n + 1]))
        datum = _datum(tokens, target_tokens=targets, weights=[1.0] * max(m, 0))
        return req(fb([*good, datum]), f"{p}.loss_fn_inputs.weights", "ALN-3")
    if kind == "target dtype":
        datum = _datum(tokens, target_tokens=np.asarray(targets, np.float32))
        return req(fb([*good, datum]), f"{p}.loss_fn_inputs.target_tokens", "ALN-3")
    if kind == "weights dtype":
        datum = _datum(tokens, target_tokens=targets, weights=np.ones(n, np.int64))
        return req(fb([*good, datum]), f"{p}.loss_fn_inputs.weights", "ALN-3")
    if kind == "target id >= V":
        bad = list(targets)
        bad[draw(st.integers(0, n - 1))] = v + draw(st.integers(0, 5))
        return req(fb([*good, _datum(tokens, target_tokens=bad)]), f"{p}.loss_fn_inputs.target_tokens", "ALN-4")
    if kind == "input id >= V":
        bad = list(tokens)
        bad[draw(st.integers(0, n - 1))] = v + draw(st.integers(0, 5))
        return req(fb([*good, _datum(bad, target_tokens=targets)]), f"{p}.model_input", "ALN-4")
    if kind == "empty model input":
        return req(fb([*good, _datum([], target_tokens=[])]), f"{p}.model_input", "ALN-5")
    if kind == "too long":
        length = max_context_length + draw(st.integers(1, 3))
        datum = _datum([1 % v] * length, target_tokens=[1 % v] * length)
        return req(fb([*good, datum]), f"{p}.model_input", "ALN-5", "ERR-4", error=ts.ContextLengthError)
    if kind == "non-finite input":
        key = draw(st.sampled_from(["weights", "logprobs", "advantages"]))
        if key == "weights":
            weights = [1.0] * n
            weights[draw(st.integers(0, n - 1))] = bad_value
            return req(
                fb([*good, _datum(tokens, target_tokens=targets, weights=weights)]),
                f"{p}.loss_fn_inputs.weights",
                "LOSS-13",
            )
        values = list(rl[key])
        values[draw(st.integers(0, n - 1))] = bad_value
        return req(fb([_datum(tokens, **{**rl, key: values})], rl_loss), f"data[0].loss_fn_inputs.{key}", "LOSS-13")
    if kind == "unknown config key":
        key = draw(st.sampled_from(["clip_epsilon", "beta", "temperature"]))
        return req(fb([_datum(tokens, **rl)], "ppo", {key: 0.2}), f"loss_fn_config.{key}", "LOSS-11")
    if kind == "non-finite config":
        key = draw(st.sampled_from(["clip_low_threshold", "clip_high_threshold"]))
        value = draw(st.sampled_from([math.nan, math.inf, "x", None]))
        return req(fb([_datum(tokens, **rl)], "ppo", {key: value}), f"loss_fn_config.{key}", "LOSS-11")
    if kind == "soft targets for an RL loss":
        soft = np.asarray(targets * 2, np.int64).reshape(2, n).T.copy()
        datum = _datum(tokens, **{**rl, "target_tokens": soft})
        return req(fb([datum], rl_loss), "data[0].loss_fn_inputs.target_tokens", "LOSS-12", "ALN-3")
    if kind == "rl input shape":
        key = draw(st.sampled_from(["logprobs", "advantages"]))
        datum = _datum(tokens, **{**rl, key: [0.0] * (n + 1)})
        return req(fb([datum], rl_loss), f"data[0].loss_fn_inputs.{key}", "ALN-3")
    # bad checkpoint name (CKPT-1)
    name = draw(st.sampled_from(["a/b", "", ".", "..", ".hidden", "white space", "tinker://x"]))
    if draw(st.booleans()):
        return req(lambda tc: tc.save_state(name), "name", "CKPT-1")
    return req(lambda tc: tc.save_weights_for_sampler(name), "name", "CKPT-1")


@st.composite
def _bad_sampling(draw: st.DrawFn, vocab_size: int, max_context_length: int) -> MalformedRequest:
    v, c = vocab_size, max_context_length
    kind = draw(
        st.sampled_from(["not a ModelInput", "empty prompt", "prompt id >= V", "num_samples", "too long", "no room"])
    )
    prompt = ts.ModelInput.from_ints(draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=4)))
    params = ts.SamplingParams(max_tokens=2)

    def req(
        invoke: Callable[..., Any], field: str, *statements: str, error: type[ts.TinkerError] = ts.BadRequestError
    ) -> MalformedRequest:
        return MalformedRequest(kind, "sampling", invoke, error, (field,), ("ERR-2", "ERR-3", *statements))

    if kind == "not a ModelInput":
        return req(lambda sc: sc.sample(prompt.to_ints(), 1, params), "prompt", "SMP-1")
    if kind == "empty prompt":
        return req(lambda sc: sc.sample(ts.ModelInput.empty(), 1, params), "prompt", "SMP-1")
    if kind == "prompt id >= V":
        bad = ts.ModelInput.from_ints([*prompt.to_ints(), v + draw(st.integers(0, 3))])
        return req(lambda sc: sc.sample(bad, 1, params), "prompt", "SMP-1", "ALN-4")
    if kind == "num_samples":
        count = draw(st.sampled_from([0, -1]))
        return req(lambda sc: sc.sample(prompt, count, params), "num_samples", "SMP-1")
    if kind == "too long":
        length = draw(st.integers(max(1, c - 3), c))
        long_prompt = ts.ModelInput.from_ints([1 % v] * length)
        too_many = ts.SamplingParams(max_tokens=c - length + draw(st.integers(1, 4)))
        return req(
            lambda sc: sc.sample(long_prompt, 1, too_many),
            "sampling_params.max_tokens",
            "SMP-2",
            "ERR-4",
            error=ts.ContextLengthError,
        )
    full = ts.ModelInput.from_ints([1 % v] * c)
    return req(
        lambda sc: sc.sample(full, 1, ts.SamplingParams()), "prompt", "SMP-2", "ERR-4", error=ts.ContextLengthError
    )


def malformed_requests(
    vocab_size: int, max_context_length: int, targets: tuple[Target, ...] = ("training", "sampling")
) -> st.SearchStrategy[MalformedRequest]:
    """Invalid requests paired with the typed error and ``field`` the spec prescribes."""
    options: list[st.SearchStrategy[MalformedRequest]] = []
    if "training" in targets:
        options.append(_bad_training(vocab_size, max_context_length))
    if "sampling" in targets:
        options.append(_bad_sampling(vocab_size, max_context_length))
    return st.one_of(options)
