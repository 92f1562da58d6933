"""Sampling throughput: tinker-std vs ``transformers`` ``generate``, LoRA adapter attached.

Same prompt, 4 samples x 64 new tokens, temperature 1, no top-k/top-p, no stop (every sample runs
to 64 tokens), raw logprobs of the sampled tokens returned by both sides.

    python bench/sampling.py --model smollm2 [--warmup 1 --steps 3]
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import common as c
import torch

import tinker_std as ts

SAMPLES, NEW_TOKENS, PROMPT_LEN, RANK = 4, 64, 32, 16


def plain_generate(model: Any, prompt: torch.Tensor, seed: int) -> list[list[float]]:
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
            top_k=None, top_p=1.0, max_new_tokens=NEW_TOKENS, eos_token_id=None,
            num_return_sequences=SAMPLES, return_dict_in_generate=True, output_logits=True,
            pad_token_id=model.config.pad_token_id or 0,
        )  # eos_token_id=None: no EOS stop, like stop=[]
    new = out.sequences[:, prompt.shape[1] :]
    assert new.shape == (SAMPLES, NEW_TOKENS)
    logits = torch.stack(out.logits, dim=1)  # raw model logits, as tinker-std reports
    return torch.log_softmax(logits.float(), -1).gather(-1, new.unsqueeze(-1)).squeeze(-1).tolist()


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=1, steps=3)
    svc = c.open_service(args.backend)
    tc = c.training_client(svc, args.base_model, RANK) if svc else None
    vocab = tc.spec.vocab_size if tc else None

    model = c.add_lora(c.plain_model(args.model, vocab), RANK).eval()
    prompt = c.random_tokens(1, PROMPT_LEN, vocab or model.config.vocab_size, seed=1)
    seeds = iter(range(10**6))
    runs: dict[str, Callable[[], object]] = {"plain generate": lambda: plain_generate(model, prompt, next(seeds))}
    if tc is not None:
        sampler = tc.save_weights_and_get_sampling_client().result()
        model_input = ts.ModelInput.from_ints(prompt[0].tolist())

        def tinker_sample() -> None:
            params = ts.SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, stop=[], seed=next(seeds))
            out = sampler.sample(model_input, num_samples=SAMPLES, sampling_params=params).result()
            assert all(len(s.tokens) == NEW_TOKENS for s in out.sequences)

        runs["tinker-std sample"] = tinker_sample

    print(f"# model {args.model}; prompt {PROMPT_LEN} tokens, {SAMPLES} samples x {NEW_TOKENS} new tokens, rank {RANK}")
    times = c.interleaved(runs, args.warmup, args.steps)
    rates = {name: SAMPLES * NEW_TOKENS / statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:>18}: {rates[name]:7.1f} tokens/s | {c.summary(t)} per request")
    if tc is not None:
        print(f"tokens/s ratio tinker-std / plain: {c.ratio(times['plain generate'], times['tinker-std sample'])}")
    if svc is not None:
        svc.close()


if __name__ == "__main__":
    main()
