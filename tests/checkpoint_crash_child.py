"""Child process of test_checkpoint_crash.py: saves a checkpoint, trains a step, then overwrites the
checkpoint and is killed with SIGKILL just before its K-th file-system operation of that overwrite
(K = 0: never; it prints how many operations there were).

argv: checkpoint_dir backend K. Prints one JSON line (flushed before the overwrite starts) with the run's
checkpoint path and the forward loss of the old and of the new weights on a probe datum.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tinker_std as ts

PROBE = ts.Datum(
    model_input=ts.ModelInput.from_ints([5, 9, 2, 7, 4, 1]),
    loss_fn_inputs={"target_tokens": [9, 2, 7, 4, 1, 3]},
)


def probe_loss(tc: ts.TrainingClient) -> float:
    return float(tc.forward([PROBE], "cross_entropy").result().metrics["loss:sum"])


def main(checkpoint_dir: str, backend: str, kill_at: int) -> None:
    base = "mock/tiny" if backend == "mock" else "tiny-llama"
    svc = ts.ServiceClient(backend=backend, checkpoint_dir=checkpoint_dir)
    tc = svc.create_lora_training_client(base_model=base, rank=4, seed=0).result()
    path = ""
    losses = []
    for step in range(2):
        tc.forward_backward([PROBE], "cross_entropy").result()
        tc.optim_step(ts.AdamParams(learning_rate=0.05)).result()
        losses.append(probe_loss(tc))
        if step == 0:
            path = tc.save_state("ckpt").result().path
    print(json.dumps({"path": path, "old": losses[0], "new": losses[1]}), flush=True)

    count = [0]

    def lethal(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapped

    # Every call that changes the file system while a checkpoint is written and committed.
    os.replace = lethal(os.replace)  # type: ignore[assignment]
    os.symlink = lethal(os.symlink)  # type: ignore[assignment]
    os.unlink = lethal(os.unlink)  # type: ignore[assignment]
    shutil.rmtree = lethal(shutil.rmtree)  # type: ignore[assignment]
    Path.write_text = lethal(Path.write_text)  # type: ignore[method-assign]
    Path.write_bytes = lethal(Path.write_bytes)  # type: ignore[method-assign]
    tc.save_state("ckpt", overwrite=True).result()
    print(json.dumps({"operations": count[0]}), flush=True)
    if kill_at == count[0] + 1:  # killed after the last operation, before any clean shutdown
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
