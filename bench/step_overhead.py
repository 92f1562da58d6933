"""Per-step cost of tinker-std vs a plain transformers + peft loop.

One step = forward_backward (summed cross-entropy) + AdamW optim_step on a batch of 4 x 128 tokens,
LoRA rank 16 on every attention and MLP projection. Target (issues 14, 23): tinker-std / plain
<= 0.9 on AMD and Intel CPUs alike, at 1 and 2 threads. The header names the CPU model, its vendor
(MKL takes different paths on AMD and Intel) and the SIMD level torch uses; compare figures only
between runs on the same vendor.

    python bench/step_overhead.py --model smollm2 [--warmup 2 --steps 5]
"""

from __future__ import annotations

from collections.abc import Callable

import common as c

BATCH, SEQ, RANK = 4, 128, 16


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=2, steps=5)
    svc = c.open_service(args.backend)
    tc = c.training_client(svc, args.base_model, RANK) if svc else None
    vocab = tc.spec.vocab_size if tc else None

    model = c.add_lora(c.plain_model(args.model, vocab), RANK)
    optimizer = c.adamw([p for p in model.parameters() if p.requires_grad])
    tokens = c.random_tokens(BATCH, SEQ + 1, vocab or model.config.vocab_size)
    print(
        f"# model {args.model}: {model.num_parameters():,} params, "
        f"{model.num_parameters(only_trainable=True):,} trainable; batch {BATCH} x {SEQ}, rank {RANK}"
    )

    steps: dict[str, Callable[[], object]] = {"plain": lambda: c.plain_train_step(model, optimizer, tokens)}
    if tc is not None:
        data = c.datums(tokens)

        def tinker_step() -> None:
            fb = tc.forward_backward(data, "cross_entropy")
            op = tc.optim_step(c.ADAM)
            fb.result()
            op.result()

        steps["tinker-std"] = tinker_step

    times = c.interleaved(steps, args.warmup, args.steps)
    for name, t in times.items():
        print(f"{name:>10}: {c.summary(t)} per step")
    if "tinker-std" in times:
        print(f"time ratio tinker-std / plain: {c.ratio(times['tinker-std'], times['plain'])}; target <= 0.9")
    if svc is not None:
        svc.close()


if __name__ == "__main__":
    main()
