"""A graph custom loss in one pass (the torch engine's seam, spec CLG-4) vs the two-pass path (FB-11).

Both sides run the same ``create_custom_loss`` handle (a policy-gradient-style loss) with
``forward_backward_custom`` on a batch of 4 x 128 tokens, LoRA rank 16, then ``optim_step``; one
service has the seam, the other is the same torch backend with ``one_pass_datum_loss = False``
(a forward, then the cross-entropy surrogate's forward_backward). Interleaved steps, medians.

    python bench/custom_loss_pass.py --model tiny [--warmup 2 --steps 5 --threads 1]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, ClassVar

import common as c
import torch

import tinker_std as ts
from tinker_std.backends.torch import TorchBackend

BATCH, SEQ, RANK = 4, 128, 16


class TwoPassTorch(TorchBackend):
    """The torch backend without the one-pass seam."""

    one_pass_datum_loss: ClassVar[bool] = False


def pg(logprobs: Any, advantages: Any) -> Any:
    pg = (logprobs * advantages).sum()
    return -pg + 0.01 * torch.exp(logprobs).mean(), {"custom/pg:sum": pg}


def main() -> None:
    args = c.parse_args(__doc__ or "", warmup=2, steps=5)
    print(f"# load before: {os.getloadavg()}")
    root = tempfile.mkdtemp()
    services = {
        "one-pass": ts.ServiceClient(backend=TorchBackend(checkpoint_dir=f"{root}/one")),
        "two-pass": ts.ServiceClient(backend=TwoPassTorch(checkpoint_dir=f"{root}/two")),
    }
    steps: dict[str, Callable[[], object]] = {}
    for name, svc in services.items():
        handle = svc.create_custom_loss(pg, {"logprobs": 1, "advantages": 1}).result()
        tc = c.training_client(svc, args.base_model, RANK)
        tokens = c.random_tokens(BATCH, SEQ + 1, tc.spec.vocab_size)
        gen = torch.Generator().manual_seed(1)
        data = [
            ts.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "advantages": ts.TensorData.from_torch(torch.randn(SEQ, generator=gen)),
                },
            )
            for d in c.datums(tokens)
        ]

        def step(tc: ts.TrainingClient = tc, data: list[ts.Datum] = data, handle: Any = handle) -> None:
            fb = tc.forward_backward_custom(data, handle)
            op = tc.optim_step(c.ADAM)
            fb.result()
            op.result()

        steps[name] = step
    print(f"# model {args.model}; batch {BATCH} x {SEQ}, rank {RANK}, threads {args.threads}")
    times = c.interleaved(steps, args.warmup, args.steps)
    for name, t in times.items():
        print(f"{name:>10}: {c.summary(t)} per step (forward_backward_custom + optim_step)")
    print(f"time ratio one-pass / two-pass: {c.ratio(times['one-pass'], times['two-pass'])}")
    print(f"# load after: {os.getloadavg()}")
    for svc in services.values():
        svc.close()


if __name__ == "__main__":
    main()
