"""``tinker-std`` command line: the demo, the backend list, and the cookbook recipes on any backend.

    tinker-std sft     --backend mock --model mock/tiny --data demo:chat --steps 50 --lr 1e-2
    tinker-std rl      --env arithmetic --group-size 8 --loss-fn ppo
    tinker-std dpo     --data prefs.jsonl --beta 0.1
    tinker-std distill --teacher tinker://<run>/weights/step_000050 --mode off_policy
    tinker-std eval    --model-path tinker://<run>/weights/step_000050 --data demo:arithmetic

Every recipe flag is a field of the recipe's config dataclass (``--learning-rate`` is also
``--lr``, ``--base-model`` also ``--model``). Metrics go to ``<log-dir>/metrics.jsonl`` and a
PNG of the curves to ``<log-dir>/curves.png``; ``--resume`` continues from a checkpoint the
recipe saved (``--save-every N``), exactly where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

#: Extra spellings of some flags, and the allowed values of enumerated ones.
_ALIASES = {"base_model": ["--model"], "learning_rate": ["--lr"]}
_CHOICES = {
    "lr_schedule": ["constant", "linear", "cosine"],
    "renderer": ["auto", "plain", "chat_template"],
    "reduction": ["mean", "none"],
    "env": ["arithmetic", "choice", "data"],
    "loss_fn": ["importance_sampling", "ppo"],
    "reference": ["sampler", "forward"],
    "mode": ["on_policy", "off_policy"],
}
_HELP = {
    "sft": "supervised fine-tuning on chat or prompt/completion JSONL",
    "rl": "group-relative policy optimisation against an environment",
    "dpo": "direct preference optimisation on chosen/rejected pairs",
    "distill": "on-policy or top-K off-policy distillation from a teacher",
    "eval": "NLL and greedy accuracy of the base model or a checkpoint",
}
#: The metric the final summary reports for each recipe.
_MAIN_METRIC = {"sft": "train_nll", "rl": "reward", "dpo": "loss", "distill": "kl", "eval": "accuracy"}


def _recipe(name: str) -> tuple[type[Any], Any]:
    """``(config class, run function)`` of a recipe, imported on demand."""
    from tinker_std.cookbook import distill, dpo, evaluate, rl, sft

    table: dict[str, tuple[type[Any], Any]] = {
        "sft": (sft.SFTConfig, sft.run),
        "rl": (rl.RLConfig, rl.run),
        "dpo": (dpo.DPOConfig, dpo.run),
        "distill": (distill.DistillConfig, distill.run),
        "eval": (evaluate.EvalConfig, evaluate.run),
    }
    return table[name]


def _scalar_type(annotation: Any) -> Any:
    """``int | None`` -> int, ``str`` -> str, ``Literal[...]`` -> str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type[Any], training: bool = True) -> None:
    """A flag per field of ``config_cls``; without ``training``, none for the fields only a training
    run reads (``TRAINING_FIELDS``: argparse then refuses them by name)."""
    from tinker_std.cookbook.run_config import TRAINING_FIELDS

    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if not training and field.name in TRAINING_FIELDS:
            continue
        flag = "--" + field.name.replace("_", "-")
        names = [flag, *_ALIASES.get(field.name, [])]
        kind = _scalar_type(hints[field.name])
        default = field.default
        if kind is bool:
            parser.add_argument(
                *names,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default {default})",
            )
        else:
            parser.add_argument(
                *names,
                dest=field.name,
                type=kind,
                default=None,
                choices=_CHOICES.get(field.name),
                metavar=None if field.name in _CHOICES else kind.__name__.upper(),
                help=f"(default {default})",
            )


def _run_recipe(args: argparse.Namespace) -> int:
    name = args.command
    config_cls, run = _recipe(name)
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(config_cls)}
    values = {name: value for name, value in given.items() if value is not None}
    values.setdefault("log_dir", f"runs/{name}")
    values.setdefault("progress", True)
    config = config_cls(**values)
    from tinker_std.cookbook.run_config import MissingLogPackage, UnreadOption

    try:
        history = run(config)
    except (MissingLogPackage, UnreadOption) as exc:  # raised before the run trains or writes a file
        print(f"tinker-std {name}: error: {exc}", file=sys.stderr)
        return 2
    key = _MAIN_METRIC[name]
    points = [row[key] for row in history if key in row]
    if points:
        print(f"{key}: first {points[0]:.4f} -> last {points[-1]:.4f} over {len(history)} step(s)")
    curves = f"   curves: {config.log_dir}/curves.png" if config.plot else ""
    print(f"metrics: {config.log_dir}/metrics.jsonl{curves}")
    if name != "eval":
        from tinker_std.cookbook.common import latest_checkpoint

        try:
            print(f"checkpoint: {latest_checkpoint(config.log_dir)}")
        except FileNotFoundError:
            pass
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tinker_std.cookbook.demo import DemoConfig, run_demo

    model = args.model or ("SmolLM2-135M-Instruct" if args.backend == "torch" else None)
    if model is None:
        import tinker_std as ts

        with ts.ServiceClient(backend=args.backend) as service:
            model = service.get_server_capabilities().supported_models[0].model_name
    assert model is not None
    config = DemoConfig(
        backend=args.backend, base_model=model, sft_steps=args.sft_steps, rl_steps=args.rl_steps, log_dir=args.log_dir
    )
    result = run_demo(config)
    sft_history = result["sft"]
    assert isinstance(sft_history, list)
    first, last = sft_history[0]["train_nll"], sft_history[-1]["train_nll"]
    print(f"SFT train_nll first step {first:.4f} -> last step {last:.4f} ({last / first:.1%} of start)")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from tinker_std.registry import available_backends, default_backend_name

    for name, target in sorted(available_backends().items()):
        marker = " (default)" if name == default_backend_name() else ""
        print(f"{name}\t{target}{marker}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import tinker_std as ts
    from tinker_std.server import TinkerServer

    options = {"checkpoint_dir": args.checkpoint_dir} if args.checkpoint_dir else {}
    with ts.ServiceClient(backend=args.backend, **options) as service:
        server = TinkerServer(
            service,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            keys_file=args.keys_file,
            max_body_bytes=args.max_body_mb * 1024 * 1024,
            idle_session_s=args.idle_session_s,
            result_ttl_s=args.result_ttl_s,
        )
        models = [m.model_name for m in service.get_server_capabilities().supported_models]
        print(f"tinker-std server on {server.url} (backend {service.backend_name}; models {models})", flush=True)
        print(f"  tinker.ServiceClient(base_url={server.url!r}, api_key='tml-...')", flush=True)
        try:
            server.serve_forever()  # returns after SIGTERM/SIGINT, pending futures failed
        except KeyboardInterrupt:
            pass
    print("tinker-std server stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinker-std", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from tinker_std.cookbook.demo import DemoConfig as DemoDefaults

    demo = sub.add_parser(
        "demo", help="SmolLM2 offline: answers before, SFT, a short RL run, answers after (see cookbook/demo.py)"
    )
    demo.add_argument("--backend", default="torch", help="backend name or module:Class (default torch)")
    demo.add_argument(
        "--model", default=None, help="base model (default: SmolLM2-135M-Instruct on torch, else the first model)"
    )
    demo.add_argument("--sft-steps", type=int, default=DemoDefaults.sft_steps)
    demo.add_argument("--rl-steps", type=int, default=DemoDefaults.rl_steps)
    demo.add_argument("--log-dir", default=None, help="where metrics, curves and run state go (default: a temp dir)")
    demo.set_defaults(func=_demo)
    serve = sub.add_parser("serve", help="serve a backend over HTTP to the official tinker SDK (base_url)")
    serve.add_argument("--backend", default=None, help="backend name or module:Class (default: the default backend)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="accept this X-API-Key (tenant 'default')")
    serve.add_argument(
        "--keys-file",
        default=None,
        help="API keys: JSON {key: tenant} or 'KEY TENANT' lines (also env TINKER_STD_API_KEYS)",
    )
    serve.add_argument("--max-body-mb", type=int, default=64, help="largest request body, MiB (default 64; 413 above)")
    serve.add_argument(
        "--idle-session-s", type=float, default=900.0, help="reap sessions idle this long, seconds (default 900)"
    )
    serve.add_argument(
        "--result-ttl-s",
        type=float,
        default=3600.0,
        help="keep a finished request's result this long for its polls, seconds (default 3600; then 410)",
    )
    serve.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (backend option)")
    serve.set_defaults(func=_serve)
    backends = sub.add_parser("backends", help="list the backends that can be named")
    backends.set_defaults(func=_backends)
    from tinker_std.backends.modal.cli import add_parser as add_modal_parser

    add_modal_parser(sub)  # tinker-std modal deploy ...
    sub.add_parser(
        "conformance",
        help="run the conformance suite against a backend (--backend NAME|module:Class [--report PATH] ...)",
        add_help=False,
    )
    sub.add_parser(
        "fsdp-worker",
        help="one rank of the fsdp backend, for torchrun (--connect HOST:PORT; see docs/fsdp.md)",
        add_help=False,
    )
    for name, help_text in _HELP.items():
        recipe = sub.add_parser(name, help=help_text, description=f"{help_text}; log dir default runs/{name}")
        _add_config_flags(recipe, _recipe(name)[0], training=name != "eval")
        recipe.set_defaults(func=_run_recipe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["conformance"]:
        # The suite has its own parser (python -m tinker_std.conformance); hand it every argument.
        from tinker_std.conformance.__main__ import main as conformance_main

        return int(conformance_main(argv[1:]))
    if argv[:1] == ["fsdp-worker"]:
        # One rank of the fsdp backend, e.g. under torchrun (docs/fsdp.md); it has its own parser.
        from tinker_std.backends.fsdp.worker import main as worker_main

        return int(worker_main(argv[1:]))
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
