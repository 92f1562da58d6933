"""``tinker-std modal deploy|serve``: deploy the Modal apps (registered in ``tinker_std/cli.py``).

    tinker-std modal deploy --gpu H100                 # the class on one H100 per base model
    tinker-std modal deploy --gpu A100-80GB --region us-east --scaledown-window 900
    tinker-std modal deploy --dry-run                  # print what would be deployed; no Modal call
    tinker-std modal serve --gpu H100                  # `tinker-std serve` as a Modal web endpoint

The options become ``TINKER_STD_MODAL_*`` variables before ``app.py`` is imported, because Modal
defines the app at import (``settings.ContainerSettings``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .settings import APP_NAME, CLASS_NAME, ContainerSettings, image_requirements, source_checkout

__all__ = ["add_parser", "settings_from_args"]


def add_parser(sub: Any) -> None:
    """Add ``modal`` (with its ``deploy`` subcommand) to the ``tinker-std`` subparsers."""
    modal = sub.add_parser("modal", help="the Modal backend: deploy the training service to Modal cloud GPUs")
    commands = modal.add_subparsers(dest="modal_command", required=True)
    deploy = commands.add_parser("deploy", help="deploy the tinker-std app to Modal (needs `modal token new`)")
    _add_settings(deploy)
    deploy.set_defaults(func=_deploy)
    serve = commands.add_parser(
        "serve", help="deploy `tinker-std serve` (the official tinker SDK's HTTP protocol) as a Modal web endpoint"
    )
    _add_settings(serve)
    serve.add_argument(
        "--api-key-secret",
        default=None,
        help="name of a Modal Secret holding TINKER_STD_API_KEY (default: any key accepted)",
    )
    serve.set_defaults(func=_serve)


def _add_settings(parser: Any) -> None:
    defaults = ContainerSettings()
    parser.add_argument(
        "--gpu",
        default=defaults.gpu,
        help=f"Modal GPU type: H100, H200, B200, A100-80GB, L40S, A10, L4, T4 (default {defaults.gpu})",
    )
    parser.add_argument("--gpu-count", type=int, default=defaults.gpu_count, help="GPUs per container (default 1)")
    parser.add_argument("--region", default=None, help="Modal region, e.g. us-east (default: anywhere)")
    parser.add_argument("--timeout", type=int, default=defaults.timeout, help="seconds one call may run")
    parser.add_argument(
        "--scaledown-window",
        type=int,
        default=defaults.scaledown_window,
        help="idle seconds before a container stops; its in-memory state is lost, checkpoints stay",
    )
    parser.add_argument(
        "--max-inputs",
        type=int,
        default=defaults.max_inputs,
        help="concurrent calls per container (sampling requests batch in the engine)",
    )
    parser.add_argument("--app-name", default=APP_NAME, help=f"Modal app name (default {APP_NAME})")
    parser.add_argument("--hf-secret", default=None, help="name of a Modal Secret with HF_TOKEN (gated models)")
    parser.add_argument("--environment", default=None, help="Modal environment (default: the profile's)")
    parser.add_argument("--dry-run", action="store_true", help="print the settings and image; contact nothing")


def settings_from_args(args: argparse.Namespace) -> ContainerSettings:
    return ContainerSettings(
        app_name=args.app_name,
        gpu=args.gpu,
        gpu_count=args.gpu_count,
        region=args.region,
        timeout=args.timeout,
        scaledown_window=args.scaledown_window,
        max_inputs=args.max_inputs,
        hf_secret=args.hf_secret,
    )


def _prepare(args: argparse.Namespace, what: str) -> ContainerSettings | None:
    """Print the plan; check modal and credentials; export the settings. ``None``: stop here."""
    settings = settings_from_args(args)
    plan = {
        "deploys": what,
        "app": settings.app_name,
        **settings.cls_options(),
        "max_inputs": settings.max_inputs,
        "volumes": {"checkpoints": settings.checkpoint_volume, "models": settings.models_volume},
        "image": {"pip": image_requirements(), "tinker_std_from": str(source_checkout() or "installed package")},
    }
    print(json.dumps(plan, indent=2))
    if args.dry_run:
        return None
    from .errors import ModalCredentialsError, ModalNotInstalledError, require_credentials, require_modal

    try:
        require_modal()
        require_credentials()
    except (ModalNotInstalledError, ModalCredentialsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    os.environ.update(settings.to_env())  # app.py defines the app from these when imported below
    return settings


def _deploy(args: argparse.Namespace) -> int:
    settings = _prepare(args, f"the training service (class {CLASS_NAME})")
    if settings is None:
        return 0
    from . import app

    app.deploy(environment_name=args.environment)
    print(
        f"deployed {settings.app_name}; use it with ServiceClient(backend='modal', gpu={settings.gpu!r}) or "
        "`tinker-std sft --backend modal ...`"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.api_key_secret:
        os.environ["TINKER_STD_MODAL_API_KEY_SECRET"] = args.api_key_secret
    what = f"the tinker-std HTTP server as a web endpoint (function http_server of app {args.app_name}-http)"
    settings = _prepare(args, what)
    if settings is None:
        return 0
    from . import web

    web.deploy(environment_name=args.environment)
    print("deployed; give the endpoint URL Modal printed above to tinker.ServiceClient(base_url=...)")
    return 0
