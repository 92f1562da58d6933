"""Sampling throughput: tinker-std vs ``transformers`` ``generate``, LoRA adapter attached.

Two workloads, temperature 1, no top-k/top-p, no stop (every sample runs to ``--new-tokens``), raw
logprobs of the sampled tokens returned by both sides (defaults: issue 14's workload):

- one request: one prompt of 32 tokens, ``--samples`` (8) samples x ``--new-tokens`` (32) new tokens;
- ``--concurrent N`` requests (default 8; 0 skips it): N different prompts (24..40 tokens), the
  same samples x new tokens each, submitted at once through ``SamplingClient.sample`` futures (which
  the torch backend may answer in one batch) vs N sequential ``generate`` calls.

The plain side runs in a child process (``--same-process 1``: in this one, as the other benchmarks
do). With torch working in two threads of one process (this thread for ``generate``, the backend's
worker thread for tinker-std), libgomp sees more OpenMP threads than cores and cuts its spin-wait
to a few iterations, so every parallel region pays a thread wake-up: on a 2-core machine both sides
then run 1.6x (SmolLM2) to 4x (tiny) slower than alone, which is no longer what either measures.

    python bench/sampling.py --model smollm2 [--warmup 1 --steps 3 --concurrent 8 --same-process 0]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import common as c
import torch

import tinker_std as ts

SAMPLES, NEW_TOKENS, PROMPT_LEN, RANK = 8, 32, 32, 16  # defaults; --samples / --new-tokens


def plain_generate(model: Any, prompt: torch.Tensor, seed: int) -> list[list[float]]:
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            temperature=1.0,
            top_k=None,
            top_p=1.0,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            num_return_sequences=SAMPLES,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=model.config.pad_token_id or 0,
        )  # eos_token_id=None: no EOS stop, like stop=[]
    new = out.sequences[:, prompt.shape[1] :]
    assert new.shape == (SAMPLES, NEW_TOKENS)
    logits = torch.stack(out.logits, dim=1)  # raw model logits, as tinker-std reports
    return torch.log_softmax(logits.float(), -1).gather(-1, new.unsqueeze(-1)).squeeze(-1).tolist()


_PLAIN: Any = None  # the plain model of a child process


def _plain_init(model: str, vocab: int, threads: int, samples: int, new_tokens: int) -> None:
    global _PLAIN, SAMPLES, NEW_TOKENS
    SAMPLES, NEW_TOKENS = samples, new_tokens
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    _PLAIN = c.add_lora(c.plain_model(model, vocab), RANK).eval()


def _plain_run(prompts: list[torch.Tensor], seed: int) -> None:
    for k, prompt in enumerate(prompts):
        plain_generate(_PLAIN, prompt, seed + k)


def report(title: str, runs: dict[str, Callable[[], object]], tokens: int, warmup: int, steps: int) -> None:
    """Time ``runs`` interleaved and print tokens/s per run and the tinker-std / plain ratio."""
    print(f"# {title}")
    times = c.interleaved(runs, warmup, steps)
    for name, t in times.items():
        print(f"{name:>18}: {tokens / statistics.median(t):7.1f} tokens/s | {c.summary(t)} per round")
    if len(times) == 2:
        plain, tinker = times.values()
        print(f"tokens/s ratio tinker-std / plain: {c.ratio(plain, tinker)}")


def main() -> None:
    global SAMPLES, NEW_TOKENS
    args = c.parse_args(
        __doc__ or "", warmup=1, steps=3, concurrent=8, same_process=0, samples=SAMPLES, new_tokens=NEW_TOKENS
    )
    SAMPLES, NEW_TOKENS = args.samples, args.new_tokens
    svc = c.open_service(args.backend)
    tc = c.training_client(svc, args.base_model, RANK) if svc else None
    vocab = tc.spec.vocab_size if tc else None

    model = c.add_lora(c.plain_model(args.model, vocab), RANK).eval() if args.same_process else None
    vocab = vocab or (model.config.vocab_size if model is not None else c.plain_model(args.model).config.vocab_size)
    prompt = c.random_tokens(1, PROMPT_LEN, vocab, seed=1)
    lengths = [PROMPT_LEN - 8 + (16 * k) // max(args.concurrent - 1, 1) for k in range(args.concurrent)]
    prompts = [c.random_tokens(1, n, vocab, seed=100 + k) for k, n in enumerate(lengths)]
    seeds = iter(range(0, 10**9, 1000))
    pool: ProcessPoolExecutor | None = None
    if model is not None:

        def plain(inputs: list[torch.Tensor]) -> None:
            for k, p in enumerate(inputs):
                plain_generate(model, p, next(seeds) + k)

    else:
        spawn = multiprocessing.get_context("spawn")
        child = ProcessPoolExecutor(
            1,
            mp_context=spawn,
            initializer=_plain_init,
            initargs=(args.model, vocab, args.threads, SAMPLES, NEW_TOKENS),
        )
        child.submit(int).result()  # the model is loaded before any timing
        pool = child

        def plain(inputs: list[torch.Tensor]) -> None:
            child.submit(_plain_run, inputs, next(seeds)).result()

    one: dict[str, Callable[[], object]] = {"plain generate": lambda: plain([prompt])}
    many: dict[str, Callable[[], object]] = {"plain generate": lambda: plain(prompts)}
    if tc is not None:
        sampler = tc.save_weights_and_get_sampling_client().result()

        def tinker_sample(inputs: list[torch.Tensor]) -> None:
            futures = [
                sampler.sample(
                    ts.ModelInput.from_ints(p[0].tolist()),
                    num_samples=SAMPLES,
                    sampling_params=ts.SamplingParams(
                        max_tokens=NEW_TOKENS, temperature=1.0, stop=[], seed=next(seeds)
                    ),
                )
                for p in inputs
            ]  # all submitted before the first result is awaited
            for future in futures:
                assert all(len(s.tokens) == NEW_TOKENS for s in future.result().sequences)

        one["tinker-std sample"] = lambda: tinker_sample([prompt])
        many["tinker-std sample"] = lambda: tinker_sample(prompts)

    where = "this process" if model is not None else "a child process"
    print(f"# model {args.model}; {SAMPLES} samples x {NEW_TOKENS} new tokens per request, rank {RANK}")
    print(f"# plain side in {where}")
    fused = os.environ.get("TINKER_STD_FUSED_DECODE", "1") != "0"
    steps = "fused (fast/fused_decode.py)" if fused else "through transformers (TINKER_STD_FUSED_DECODE=0)"
    print(f"# tinker-std decode steps: {steps}")
    report(f"one request, prompt {PROMPT_LEN} tokens", one, SAMPLES * NEW_TOKENS, args.warmup, args.steps)
    if args.concurrent > 0:
        title = f"{args.concurrent} concurrent requests, prompts {min(lengths)}..{max(lengths)} tokens"
        report(title, many, args.concurrent * SAMPLES * NEW_TOKENS, args.warmup, args.steps)
    if svc is not None:
        svc.close()
    if pool is not None:
        pool.shutdown()


if __name__ == "__main__":
    main()
