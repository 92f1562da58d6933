"""Per-rank memory and step time of the FSDP backend vs one process.

Prints, in one run on one model:

* resident parameter bytes per rank of the frozen base with ``fsdp`` at 2 ranks vs 1 rank (the
  local FSDP2 shards, counted on rank 0 after one training step; target <= 0.55x), plus the
  replicated LoRA bytes and each rank's peak RSS;
* step time (forward_backward + optim_step, 4 x 128 tokens, LoRA rank 16 on every attention and
  MLP projection) of ``fsdp`` with 2 ranks vs the ``torch`` backend on the same data, interleaved.

    python bench/fsdp.py --model tiny        # built-in tiny-llama
    python bench/fsdp.py --model smollm2     # SmolLM2-135M (converted demo model)

Each rank runs ``--rank-threads`` intra-op threads (default 1), the torch backend ``--threads``.
On a 2-core CPU machine FSDP is about correctness and memory, not speed: 2 ranks share 2 cores
and add collectives to every layer.
"""

from __future__ import annotations

import time

import common as c

import tinker_std as ts

BATCH, SEQ, RANK = 4, 128, 16


def _peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _fsdp(world_size: int, threads: int) -> ts.ServiceClient:
    return ts.ServiceClient(backend="fsdp", world_size=world_size, threads=threads)


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=1, steps=3, rank_threads=1)
    base = args.base_model

    bytes_per_rank: dict[int, dict[str, int]] = {}
    for world in (1, 2):
        start = time.perf_counter()
        with _fsdp(world, args.rank_threads) as svc:
            client = c.training_client(svc, base, RANK)
            tokens = c.random_tokens(BATCH, SEQ + 1, client.spec.vocab_size)
            client.forward_backward(c.datums(tokens), "cross_entropy").result()  # measured after a step
            client.optim_step(c.ADAM).result()
            bytes_per_rank[world] = svc.backend.engine.parameter_bytes()[base]  # type: ignore[attr-defined]
        print(f"# fsdp world {world}: started, loaded and released in {time.perf_counter() - start:.1f} s")
    one, two = bytes_per_rank[1], bytes_per_rank[2]
    print(
        f"base parameter bytes per rank: 1 rank {one['base']:,} | 2 ranks {two['base']:,} "
        f"| ratio {two['base'] / one['base']:.3f} (target <= 0.55)"
    )
    print(f"LoRA bytes per rank (replicated): {two['adapters']:,} ({two['adapters'] / one['base']:.4f} of the base)")

    torch_svc = ts.ServiceClient(backend="torch")
    fsdp_svc = _fsdp(2, args.rank_threads)
    try:
        ref = c.training_client(torch_svc, base, RANK)
        tc = c.training_client(fsdp_svc, base, RANK)
        tokens = c.random_tokens(BATCH, SEQ + 1, ref.spec.vocab_size)
        data = c.datums(tokens)
        losses: dict[str, list[float]] = {"torch": [], "fsdp": []}

        def step(client: ts.TrainingClient, name: str) -> None:
            fb = client.forward_backward(data, "cross_entropy")
            op = client.optim_step(c.ADAM)
            losses[name].append(fb.result().metrics["loss:sum"])
            op.result()

        print(
            f"# step: batch {BATCH} x {SEQ}, LoRA rank {RANK}; torch threads {args.threads}, "
            f"fsdp 2 ranks x {args.rank_threads} thread(s)"
        )
        times = c.interleaved(
            {"torch": lambda: step(ref, "torch"), "fsdp": lambda: step(tc, "fsdp")}, args.warmup, args.steps
        )
        for name, values in times.items():
            print(f"{name:6s} step: {c.summary(values)}")
        print(f"step time fsdp(2) / torch: {c.ratio(times['fsdp'], times['torch'])}")
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp"], losses["torch"], strict=True))
        print(f"loss agreement fsdp vs torch over {len(losses['torch'])} steps: max relative diff {worst:.2e}")
        pids = [p.pid for p in fsdp_svc.backend.group.processes]  # type: ignore[attr-defined]
        peaks = ", ".join(f"rank {r} {_peak_rss_mib(pid):.0f} MiB" for r, pid in enumerate(pids))
        print(f"peak RSS per rank: {peaks}; this process (torch backend + client) {c.rss_mib()[1]:.0f} MiB")
    finally:
        fsdp_svc.close()
        torch_svc.close()


if __name__ == "__main__":
    main()
