"""The official SDK over loopback HTTP vs the same calls in process (tinker-std ``ServiceClient``).

Both sides use the same backend in this process: the in-process side calls a ``ServiceClient``
directly, the SDK side goes through ``tinker.ServiceClient(base_url=...)`` to a ``TinkerServer``
serving a second ``ServiceClient`` of the same backend. One training step = forward_backward
(summed cross-entropy, batch 4 x 128) + optim_step, LoRA rank 16; sampling = one prompt of 32
tokens, 4 samples x 32 new tokens. Prints step seconds, sampled tokens per second, and the ratios
SDK-over-HTTP / in-process (target <= 1.2 for a SmolLM2 step).

    python bench/server_overhead.py --model smollm2 [--warmup 1 --steps 4]
"""

from __future__ import annotations

import os
from collections.abc import Callable

import common as c

import tinker_std as ts
from tinker_std.server import TinkerServer

BATCH, SEQ, RANK, PROMPT, NEW, SAMPLES = 4, 128, 16, 32, 32, 4
KEY = "tml-bench"


def main() -> None:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import tinker

    args = c.parse_args(__doc__ or "", warmup=1, steps=4)
    local_svc = c.open_service(args.backend)
    served_svc = c.open_service(args.backend)
    assert local_svc is not None and served_svc is not None
    local = c.training_client(local_svc, args.base_model, RANK)
    vocab = local.spec.vocab_size
    tokens = c.random_tokens(BATCH, SEQ + 1, vocab)
    rows = tokens.tolist()
    data = c.datums(tokens)
    sdk_data = [
        tinker.Datum(
            model_input=tinker.ModelInput.from_ints(r[:-1]),
            loss_fn_inputs={"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)},
        )
        for r in rows
    ]
    prompt = rows[0][:PROMPT]
    print(
        f"# backend {args.backend}, model {args.base_model}; step: batch {BATCH} x {SEQ}, rank {RANK}; "
        f"sample: {SAMPLES} x {NEW} new tokens"
    )

    with TinkerServer(served_svc, api_key=KEY) as server:
        sdk = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        remote = sdk.create_lora_training_client(
            base_model=args.base_model, rank=RANK, seed=0, train_unembed=False
        ).result()

        def local_step() -> None:
            fb, op = local.forward_backward(data, "cross_entropy"), local.optim_step(c.ADAM)
            fb.result()
            op.result()

        def sdk_step() -> None:
            fb = remote.forward_backward(sdk_data, "cross_entropy")
            op = remote.optim_step(tinker.AdamParams(learning_rate=c.ADAM.learning_rate))
            fb.result()
            op.result()

        steps: dict[str, Callable[[], object]] = {"in-process": local_step, "sdk-http": sdk_step}
        times = c.interleaved(steps, args.warmup, args.steps)
        for name, t in times.items():
            print(f"step {name:>10}: {c.summary(t)}")
        print(f"step ratio sdk-http / in-process: {c.ratio(times['sdk-http'], times['in-process'])}; target <= 1.2")

        local_sampler = local.save_weights_and_get_sampling_client().result()
        remote_sampler = remote.save_weights_and_get_sampling_client().result()
        sampling: dict[str, Callable[[], object]] = {
            "in-process": lambda: local_sampler.sample(
                ts.ModelInput.from_ints(prompt), SAMPLES, ts.SamplingParams(max_tokens=NEW, seed=1)
            ).result(),
            "sdk-http": lambda: remote_sampler.sample(
                tinker.ModelInput.from_ints(prompt),
                num_samples=SAMPLES,
                sampling_params=tinker.SamplingParams(max_tokens=NEW, seed=1),
            ).result(),
        }
        stimes = c.interleaved(sampling, args.warmup, args.steps)
        for name, t in stimes.items():
            print(f"sample {name:>10}: {SAMPLES * NEW / (sum(t) / len(t)):.1f} tok/s ({c.summary(t)})")
        print(f"sampling time ratio sdk-http / in-process: {c.ratio(stimes['sdk-http'], stimes['in-process'])}")
    local_svc.close()
    served_svc.close()


if __name__ == "__main__":
    main()
