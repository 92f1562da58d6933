"""``tinker-std`` command line: run the demo and recipes on any backend by name."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tinker_std.cookbook.sft import SFTConfig, run_sft

    config = SFTConfig(
        backend=args.backend, base_model=args.model, rank=args.rank, steps=args.steps, learning_rate=args.lr
    )
    from tinker_std.registry import default_backend_name

    bar = tqdm(total=config.steps, desc=f"SFT on {args.backend or default_backend_name()}", unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)

    losses = run_sft(config, on_step=on_step)
    bar.close()
    print(f"loss:sum first step {losses[0]:.4f} -> last step {losses[-1]:.4f} ({losses[-1] / losses[0]:.1%} of start)")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from tinker_std.registry import available_backends, default_backend_name

    for name, target in sorted(available_backends().items()):
        marker = " (default)" if name == default_backend_name() else ""
        print(f"{name}\t{target}{marker}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinker-std", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fine-tune with a short SFT loop and show the loss falling")
    demo.add_argument("--backend", default=None, help="backend name or module:Class (default $TINKER_STD_BACKEND)")
    demo.add_argument("--model", default=None, help="base model (default: the backend's first model)")
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--lr", type=float, default=1e-2)
    demo.set_defaults(func=_demo)
    backends = sub.add_parser("backends", help="list the backends that can be named")
    backends.set_defaults(func=_backends)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
