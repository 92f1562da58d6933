"""Many tenants on one base model: throughput and memory.

8 LoRA clients (rank 16), each training on its own 2 x 128 tokens. Measured per round (every
client does forward_backward + optim_step once):

- plain: one peft model with 8 adapters, ``set_adapter`` + step per adapter, one AdamW each;
- tinker-std, one at a time: each client's calls are awaited before the next client's start;
- tinker-std, all at once: all 8 forward_backward calls submitted, then the 8 optim_steps; the
  torch engine's measured choice of path (``batching="auto"``), and each path forced
  (``batched``: one pass with per-row adapters; ``serial``: one pass per client).

Memory is this process's resident set size (RSS) after 1 tenant and after 8 tenants.

    python bench/multi_tenant.py --model smollm2 [--tenants 8 --warmup 1 --steps 3]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import common as c

import tinker_std as ts

ROWS, SEQ, RANK = 2, 128, 16


def plain_side(args: argparse.Namespace, vocab: int | None) -> tuple[Callable[[], None], list[tuple[str, float]], int]:
    memory = [("before", c.rss_mib()[0])]
    base = c.plain_model(args.model, vocab)
    vocab = vocab or base.config.vocab_size
    memory.append(("base model", c.rss_mib()[0]))
    batches = [c.random_tokens(ROWS, SEQ + 1, vocab, seed=i) for i in range(args.tenants)]
    optimizers = []
    model = c.add_lora(base, RANK, "t0")
    for i in range(args.tenants):
        name = f"t{i}"
        if i > 0:
            c.add_lora(model, RANK, name)
        model.set_adapter(name)
        optimizers.append(c.adamw([p for n, p in model.named_parameters() if f".{name}." in n]))
        c.plain_train_step(model, optimizers[i], batches[i])  # allocates AdamW state
        if i in (0, args.tenants - 1):
            memory.append((f"{i + 1} tenant(s)", c.rss_mib()[0]))

    def round_() -> None:
        for i in range(args.tenants):
            model.set_adapter(f"t{i}")
            c.plain_train_step(model, optimizers[i], batches[i])

    return round_, memory, vocab


def main() -> None:
    args = c.parse_args(__doc__ or "", tenants=8, warmup=1, steps=3)
    svc = c.open_service(args.backend)
    rounds: dict[str, Callable[[], None]] = {}
    memory: dict[str, list[tuple[str, float]]] = {}
    vocab: int | None = None
    chooser = None
    if svc is not None:
        memory["tinker-std"] = [("before", c.rss_mib()[0])]
        clients, data = [], []
        for i in range(args.tenants):
            clients.append(c.training_client(svc, args.base_model, RANK))
            vocab = clients[0].spec.vocab_size
            data.append(c.datums(c.random_tokens(ROWS, SEQ + 1, vocab, seed=i)))
            clients[i].forward_backward(data[i], "cross_entropy").result()
            clients[i].optim_step(c.ADAM).result()  # allocates AdamW state
            if i in (0, args.tenants - 1):
                memory["tinker-std"].append((f"{i + 1} tenant(s)", c.rss_mib()[0]))

        def one_at_a_time() -> None:
            for tc, d in zip(clients, data, strict=True):
                tc.forward_backward(d, "cross_entropy").result()
                tc.optim_step(c.ADAM).result()

        chooser = getattr(getattr(svc.backend, "engine", None), "path_chooser", None)

        def all_at_once(mode: str) -> Callable[[], None]:
            def round_() -> None:
                if chooser is not None:
                    chooser.mode = mode
                pairs = zip(clients, data, strict=True)
                futures: list[ts.APIFuture[Any]] = [tc.forward_backward(d, "cross_entropy") for tc, d in pairs]
                futures += [tc.optim_step(c.ADAM) for tc in clients]
                for f in futures:
                    f.result()
                if chooser is not None:
                    chooser.mode = "auto"

            return round_

        rounds["tinker-std one at a time"] = one_at_a_time
        rounds["tinker-std all at once"] = all_at_once("auto")
        if chooser is not None:
            rounds["all at once, batched"] = all_at_once("batched")
            rounds["all at once, serial"] = all_at_once("serial")

    plain_round, memory["plain"], vocab = plain_side(args, vocab)
    rounds = {"plain sequential": plain_round, **rounds}

    tokens = args.tenants * ROWS * SEQ
    print(f"# model {args.model}; {args.tenants} tenants x {ROWS} x {SEQ} tokens = {tokens} tokens per round")
    times = c.interleaved(rounds, args.warmup, args.steps)
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:>26}: {rates[name]:8.1f} tokens/s | {c.summary(t)} per round")
    for name in rates:
        if name != "plain sequential":
            print(f"speed-up {name} vs plain sequential: {c.ratio(times['plain sequential'], times[name])}")
    if "tinker-std all at once" in rates:
        for name in [n for n in rates if n.startswith(("tinker-std all", "all at once"))]:
            print(f"speed-up {name} vs one at a time: {c.ratio(times['tinker-std one at a time'], times[name])}")
    if chooser is not None:
        print(f"engine's measured choice per (clients, padded tokens): {chooser.preferred()}")

    for side, rows in memory.items():
        base = rows[0][1]
        growth = " | ".join(f"{label}: {rss - base:+.0f}" for label, rss in rows[1:])
        print(f"RSS {side:>10} (MiB above 'before' {base:.0f}): {growth}")
        (_, one), (_, many) = rows[-2:]
        print(f"    per extra tenant: {(many - one) / max(args.tenants - 1, 1):.1f} MiB")
    print(f"peak RSS of the process: {c.rss_mib()[1]:.0f} MiB")
    if svc is not None:
        svc.close()


if __name__ == "__main__":
    main()
