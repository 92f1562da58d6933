"""Where a training step's time goes: ``torch.profiler`` on the step of ``step_overhead.py``, both sides.

One step = forward_backward (summed cross-entropy) + AdamW optim_step on 4 x 128 tokens, LoRA rank
16, as in ``bench/step_overhead.py``. The tinker-std side calls its torch engine directly (in this
thread, so the profiler sees its operators; the client adds no compute). Each side is profiled
``--reps`` times, interleaved; per operator and input shape the least self time of the runs is
kept (on a shared machine the least disturbed run), and the rows are listed largest first, with
each side's CPU seconds per step (``time.process_time``, which the other processes of a busy
machine disturb less than wall time does).

    python bench/step_profile.py --model smollm2 --threads 1 [--reps 3 --rows 30]

Compare vendors by running it on both: the header names the CPU and its vendor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import common as c
from torch.profiler import profile

BATCH, SEQ, RANK = 4, 128, 16

Table = dict[tuple[str, str], tuple[float, int]]


def profiled(fn: Callable[[], object], table: Table) -> float:
    """Run ``fn`` under the profiler; keep each (operator, shapes) row's least self time in
    ``table`` (ms, calls); the run's CPU seconds."""
    with profile(record_shapes=True) as prof:
        start = time.process_time()
        fn()
        cpu = time.process_time() - start
    for event in prof.key_averages(group_by_input_shape=True):
        key = (event.key, str(event.input_shapes)[:90])
        row = (event.self_cpu_time_total / 1e3, event.count)
        if key not in table or table[key][0] > row[0]:
            table[key] = row
    return cpu


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=2, reps=3, rows=30)
    svc = c.open_service(args.backend)
    if svc is None:
        return
    tc = c.training_client(svc, args.base_model, RANK)
    engine: Any = getattr(svc.backend, "engine", None)
    if engine is None:
        print(f"# backend {args.backend!r} has no in-process engine to profile")
        return
    model = c.add_lora(c.plain_model(args.model, tc.spec.vocab_size), RANK)
    optimizer = c.adamw([p for p in model.parameters() if p.requires_grad])
    tokens = c.random_tokens(BATCH, SEQ + 1, tc.spec.vocab_size)
    data = c.datums(tokens)

    def tinker_step() -> None:
        engine.forward_backward(tc.model_id, data, "cross_entropy", {}, True)
        engine.optim_step(tc.model_id, c.ADAM)

    steps: dict[str, Callable[[], object]] = {
        "plain": lambda: c.plain_train_step(model, optimizer, tokens),
        "tinker-std": tinker_step,
    }
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    tables: dict[str, Table] = {name: {} for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, fn in steps.items():
            cpu[name].append(profiled(fn, tables[name]))
    for name, table in tables.items():
        rows = sorted(table.items(), key=lambda kv: -kv[1][0])
        total = sum(ms for ms, _ in table.values())
        print(
            f"\n== {name}: {min(cpu[name]):.3f} s CPU per step (least of {args.reps}); "
            f"sum of per-operator least self times {total:.0f} ms (profiler overhead included)"
        )
        for (op, shapes), (ms, calls) in rows[: args.rows]:
            print(f"{ms:9.1f} ms {100 * ms / total:5.1f}% {calls:5d}x  {op[:42]:42s} {shapes}")
    svc.close()


if __name__ == "__main__":
    main()
