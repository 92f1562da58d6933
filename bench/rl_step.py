"""One RL step of the demo (``cookbook/demo.py`` -> ``cookbook/rl.py``): tinker-std vs the same
step written by hand on transformers + peft.

The step: ``--groups`` (4) prompts x ``--group-size`` (4) samples = 16 completions of
``--new-tokens`` (8, the demo's arithmetic env) tokens at temperature 1, then one
``importance_sampling`` ``forward_backward`` over all 16 (advantages given, sampler logprobs as
``q``) and one AdamW ``optim_step``. No stop (every completion runs to ``--new-tokens``) and fixed
advantages, so that both sides do exactly the same work whatever the weights sample.

- tinker-std: ``save_weights_and_get_sampling_client``, the 16 samples as 4 ``sample`` futures
  submitted together (seeded), datums, ``forward_backward`` + ``optim_step``;
- by hand: ``generate`` per prompt (``num_return_sequences``, seeded through the global RNG,
  logits kept for the sampled tokens' logprobs), one right-padded forward over the 16 sequences,
  ``loss = -sum(exp(logp - q) * advantage)`` over completion tokens, ``backward``, AdamW step.

Both sides run in this process, interleaved (tinker-std's torch backend computes in its worker
thread, the plain side in this one; set ``OMP_NUM_THREADS`` for both).

    python bench/rl_step.py --model smollm2 [--warmup 1 --steps 5]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import common as c
import torch

import tinker_std as ts

RANK, PROMPT_LEN = 16, 32


def plain_rl_step(
    model: Any, optimizer: torch.optim.Optimizer, prompts: list[list[int]], group: int, new: int, seed: int
) -> float:
    """Sample ``group`` completions per prompt with ``generate``, then one importance-sampling step."""
    rows: list[tuple[list[int], list[int], list[float]]] = []  # (prompt, completion, sampled logprobs)
    model.eval()
    with torch.no_grad():
        for k, prompt in enumerate(prompts):
            torch.manual_seed(seed + k)
            ids = torch.tensor([prompt])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=None,
                top_p=1.0,
                max_new_tokens=new,
                eos_token_id=None,
                num_return_sequences=group,
                return_dict_in_generate=True,
                output_logits=True,
                pad_token_id=model.config.pad_token_id or 0,
            )
            completions = out.sequences[:, ids.shape[1] :]
            logits = torch.stack(out.logits, dim=1).float()
            q = torch.log_softmax(logits, -1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)
            rows += [(prompt, c_.tolist(), q_.tolist()) for c_, q_ in zip(completions, q, strict=True)]
    advantages = _advantages(len(rows))
    width = max(len(p) + len(s) for p, s, _ in rows) - 1
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.zeros_like(ids)
    q = torch.zeros((len(rows), width))
    adv = torch.zeros((len(rows), width))
    for i, (prompt, completion, lps) in enumerate(rows):
        tokens = prompt + completion
        n = len(tokens) - 1
        ids[i, :n], mask[i, :n], targets[i, :n] = torch.tensor(tokens[:-1]), 1, torch.tensor(tokens[1:])
        start = len(prompt) - 1  # the first target that is a completion token
        q[i, start:n] = torch.tensor(lps)
        adv[i, start:n] = advantages[i]
    model.train()
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -(torch.exp(logp - q) * adv).sum()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _advantages(n: int) -> list[float]:
    """Fixed per-completion advantages (+1, -1, ...) divided by ``n``, as ``cookbook/rl.py`` scales them."""
    return [(1.0 if i % 2 == 0 else -1.0) / n for i in range(n)]


def tinker_rl_step(tc: ts.TrainingClient, prompts: list[list[int]], group: int, new: int, seed: int) -> float:
    """The same step through tinker-std's public API, as ``cookbook/rl.py`` runs it."""
    sampler = tc.save_weights_and_get_sampling_client().result()
    params = [ts.SamplingParams(max_tokens=new, temperature=1.0, stop=[], seed=seed + k) for k in range(len(prompts))]
    futures = [sampler.sample(ts.ModelInput.from_ints(p), group, sp) for p, sp in zip(prompts, params, strict=True)]
    sampled = [(p, s) for p, f in zip(prompts, futures, strict=True) for s in f.result().sequences]
    advantages = _advantages(len(sampled))
    datums = []
    for (prompt, seq), a in zip(sampled, advantages, strict=True):
        tokens, pad = prompt + seq.tokens, [0.0] * (len(prompt) - 1)
        datums.append(
            ts.Datum(
                model_input=ts.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": tokens[1:],
                    "logprobs": pad + list(seq.logprobs or []),
                    "advantages": pad + [a] * len(seq.tokens),
                },
            )
        )
    fb = tc.forward_backward(datums, "importance_sampling")
    opt = tc.optim_step(c.ADAM)
    loss = fb.result().metrics["loss:sum"]
    opt.result()
    return float(loss)


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=1, steps=5, groups=4, group_size=4, new_tokens=8)
    svc = c.open_service(args.backend)
    tc = c.training_client(svc, args.base_model, RANK) if svc else None
    vocab = tc.spec.vocab_size if tc else None
    model = c.add_lora(c.plain_model(args.model, vocab), RANK)
    optimizer = c.adamw([p for p in model.parameters() if p.requires_grad])
    vocab = vocab or model.config.vocab_size
    prompts = [c.random_tokens(1, PROMPT_LEN - 4 + 2 * k, vocab, seed=200 + k)[0].tolist() for k in range(args.groups)]
    seeds = iter(range(0, 10**9, 1000))
    print(
        f"# model {args.model}; {args.groups} prompts x {args.group_size} samples x {args.new_tokens} new tokens, "
        f"importance_sampling, rank {RANK}; both sides in this process, interleaved"
    )
    steps: dict[str, Callable[[], object]] = {
        "plain": lambda: plain_rl_step(model, optimizer, prompts, args.group_size, args.new_tokens, next(seeds))
    }
    if tc is not None:
        steps["tinker-std"] = lambda: tinker_rl_step(tc, prompts, args.group_size, args.new_tokens, next(seeds))
    times = c.interleaved(steps, args.warmup, args.steps)
    for name, t in times.items():
        print(f"{name:>10}: {c.summary(t)} per RL step")
    if "tinker-std" in times:
        print(f"time ratio tinker-std / plain: {c.ratio(times['tinker-std'], times['plain'])}; target <= 0.6")
    if svc is not None:
        svc.close()


if __name__ == "__main__":
    main()
