"""The first-step probe: LoRA scaling and AdamW hyperparameters made observable from outputs.

Take a fresh client that adapts only the output projection (``train_unembed`` alone, LORA-4),
so the hidden state ``h`` feeding ``lm_head`` never changes, and one datum whose only weighted
position (weight 1, every other weight 0) predicts target ``t``. Its gradient for ``B`` is
``G_B = s·δ·(A h)ᵀ`` with ``s = alpha / rank`` (LORA-1), ``δ = softmax(y) - e_t``, and ``G_A = 0``
because ``B = 0`` (LORA-2). AdamW's first update of an element with gradient ``g`` is
``lr·g / (|g| + eps)``, i.e. ``lr·sign(g)`` for ``eps = 1e-12``; weight decay ``λ`` multiplies ``A``
by ``1 - lr·λ`` (OPT-2). So the logits move by exactly::

    Δy_o = -c·sign(δ_o),  c = lr·(1 - lr·λ)·s·Σ_k |(A h)_k|

every non-target logit by ``-c`` and the target's by ``+c``: the change of the returned logprob of
``t`` minus that of any other token is ``2c``, and all non-target tokens change alike. Nothing
here is approximate (no linearisation): the probe reads ``c`` from outputs on every backend.

* LORA-4: the non-target changes agree (an adapted attention or MLP layer would move ``h``).
* LORA-1: ``Σ_k |(A h)_k|`` is a sum of ``rank`` i.i.d. terms, so ``c / lr`` estimates the same
  ``alpha·E|a·h|`` at every rank; ``alpha`` in place of ``alpha / rank`` multiplies it by ``rank``.
* OPT-3/OPT-5/OPT-7: a step at ``t = 2`` (after an empty step with ``lr = 0``) with betas
  ``(β1, β2)`` moves by ``c·sqrt(1 + β2) / (1 + β1)`` (bias corrections of ``t = 2``).
* OPT-2: decoupled decay scales ``c`` by ``1 - lr·λ``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import tinker_std as ts

from .helpers import forward_logprobs
from .tolerances import ToleranceClass, resolve

__all__ = ["PROBE_LR", "FirstStep", "first_step", "probe_params", "c_allowance"]

#: Learning rate of the probe's step: large enough that ``c`` (~1) dwarfs the bf16 tolerance.
PROBE_LR = 0.1


def probe_params(**update: float) -> ts.AdamParams:
    """The probe's ``AdamParams``: every field explicit (no reliance on defaults)."""
    fields: dict[str, float] = {
        "learning_rate": PROBE_LR,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    fields.update(update)
    return ts.AdamParams(**fields)


@dataclass(frozen=True)
class FirstStep:
    """What one probe run observed: ``c`` and the largest disagreement between non-target changes."""

    c: float
    spread: float
    #: the fresh client's logprobs before any step, one per probed token (for LORA-2 checks)
    before: tuple[float, ...]


def _datum(prompt: Sequence[int], last: int) -> ts.Datum:
    tokens = list(prompt)
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens),
        loss_fn_inputs={
            "target_tokens": [*tokens[1:], last],
            "weights": [0.0] * (len(tokens) - 1) + [1.0],
        },
    )


def first_step(
    new_client: Callable[..., ts.TrainingClient],
    prompt: Sequence[int],
    target: int,
    others: Sequence[int],
    *,
    rank: int,
    seed: int,
    steps: Sequence[ts.AdamParams],
) -> FirstStep:
    """Run the probe: a fresh unembedding-only client of ``rank`` and ``seed``; the empty steps
    ``steps[:-1]`` (no gradient), then one ``forward_backward`` on the target datum and the step
    ``steps[-1]``. ``c`` is half the target's logprob change minus the mean non-target change."""
    tc = new_client(seed=seed, rank=rank, train_attn=False, train_mlp=False, train_unembed=True)
    data = [_datum(prompt, token) for token in (target, *others)]
    before = [float(lp[-1]) for lp in forward_logprobs(tc, data)]
    for params in steps[:-1]:
        tc.optim_step(params)
    tc.forward_backward(data[:1], "cross_entropy")
    tc.optim_step(steps[-1])
    after = [float(lp[-1]) for lp in forward_logprobs(tc, data)]
    change = np.array(after) - np.array(before)
    rest = change[1:]
    return FirstStep(
        c=float((change[0] - rest.mean()) / 2), spread=float(rest.max() - rest.min()), before=tuple(before)
    )


def c_allowance(c: float, before: Sequence[float], tolerance: str | ToleranceClass | None = None) -> float:
    """How far a correct backend's measured ``c`` can lie from the exact one: each of the logprobs
    it is made of within the per-element tolerance (4 of them in the difference, halved), plus
    rounding of the AdamW update and of ``B`` in the working precision (``16·u`` relative)."""
    cls = resolve(tolerance)
    worst = max(abs(x) for x in before) + 2 * abs(c)
    return 2 * (cls.token_atol + cls.token_rtol * worst) + 16 * cls.unit_roundoff * abs(c)
