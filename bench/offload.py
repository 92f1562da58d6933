"""Cost of moving one idle tenant's state out of memory and back (``backends/torch/offload.py``).

A real tinker-std training client (rank 16, attention + MLP LoRA) takes one step, so that its
adapter weights and AdamW moments exist; then its state is offloaded to a file and restored,
``--steps`` times. Prints the median seconds of each half and the bytes moved.

    python bench/offload.py --model smollm2 [--steps 5]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import common as c

from tinker_std.backends.torch import TorchEngine, offload
from tinker_std.checkpoints import CheckpointStore
from tinker_std.types import LoraConfig

RANK = 16


def main() -> None:
    args = c.parse_args(__doc__ or "", steps=5)
    with tempfile.TemporaryDirectory() as root:
        engine = TorchEngine(CheckpointStore(root), device="cpu")
        spec = engine.create_model(args.base_model, LoraConfig(rank=RANK, seed=0, train_unembed=False))
        data = c.datums(c.random_tokens(2, 129, spec.vocab_size))
        engine.forward_backward(spec.model_id, data, "cross_entropy", {}, True)
        engine.optim_step(spec.model_id, c.ADAM)
        model = engine.training.models[spec.model_id]
        store = offload.IdleStore(Path(root) / "idle")
        nbytes = sum(p.numel() * p.element_size() for p in model.params.values()) * 3
        out, back = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            store.offload(spec.model_id, model.params, model.optimizer)
            middle = time.perf_counter()
            store.restore(spec.model_id, model.params, model.optimizer)
            out.append(middle - start)
            back.append(time.perf_counter() - middle)
        print(f"# model {args.model}: one tenant's weights + AdamW moments, {nbytes / 2**20:.1f} MiB")
        print(f"offload: median {statistics.median(out):.4f} s | restore: median {statistics.median(back):.4f} s")
        store.close()
        engine.close()


if __name__ == "__main__":
    main()
