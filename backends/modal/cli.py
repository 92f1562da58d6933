"""``tinker-std modal deploy``: deploy the Modal app (registered in ``tinker_std/cli.py``).

    tinker-std modal deploy --gpu H100                 # the class on one H100 per base model
    tinker-std modal deploy --gpu A100-80GB --region us-east --scaledown-window 900
    tinker-std modal deploy --dry-run                  # print what would be deployed; no Modal call

The options become ``TINKER_STD_MODAL_*`` variables before ``app.py`` is imported, because Modal
defines the app at import (``settings.ContainerSettings``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .settings import APP_NAME, CLASS_NAME, ContainerSettings, image_requirements, source_checkout

__all__ = ["add_parser", "settings_from_args"]


def add_parser(sub: Any) -> None:
    """Add ``modal`` (with its ``deploy`` subcommand) to the ``tinker-std`` subparsers."""
    modal = sub.add_parser("modal", help="the Modal backend: deploy the training service to Modal cloud GPUs")
    commands = modal.add_subparsers(dest="modal_command", required=True)
    deploy = commands.add_parser("deploy", help="deploy the tinker-std app to Modal (needs `modal token new`)")
    defaults = ContainerSettings()
    deploy.add_argument("--gpu", default=defaults.gpu, help="Modal GPU type: H100, H200, B200, A100-80GB, L40S, A10G, "
                        f"L4, T4 (default {defaults.gpu})")
    deploy.add_argument("--gpu-count", type=int, default=defaults.gpu_count, help="GPUs per container (default 1)")
    deploy.add_argument("--region", default=None, help="Modal region, e.g. us-east (default: anywhere)")
    deploy.add_argument("--timeout", type=int, default=defaults.timeout, help="seconds one call may run")
    deploy.add_argument("--scaledown-window", type=int, default=defaults.scaledown_window,
                        help="idle seconds before a container stops; its in-memory state is lost, checkpoints stay")
    deploy.add_argument("--max-inputs", type=int, default=defaults.max_inputs,
                        help="concurrent calls per container (sampling requests batch in the engine)")
    deploy.add_argument("--app-name", default=APP_NAME, help=f"Modal app name (default {APP_NAME})")
    deploy.add_argument("--hf-secret", default=None, help="name of a Modal Secret with HF_TOKEN (gated models)")
    deploy.add_argument("--environment", default=None, help="Modal environment (default: the profile's)")
    deploy.add_argument("--dry-run", action="store_true", help="print the settings and image; contact nothing")
    deploy.set_defaults(func=_deploy)


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


def _deploy(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    plan = {
        "app": settings.app_name,
        "class": CLASS_NAME,
        **settings.cls_options(),
        "max_inputs": settings.max_inputs,
        "volumes": {"checkpoints": settings.checkpoint_volume, "models": settings.models_volume},
        "image": {"pip": image_requirements(), "tinker_std_from": str(source_checkout() or "installed package")},
    }
    print(json.dumps(plan, indent=2))
    if args.dry_run:
        return 0
    import sys

    from .errors import ModalCredentialsError, ModalNotInstalledError, require_credentials, require_modal

    try:
        require_modal()
        require_credentials()
    except (ModalNotInstalledError, ModalCredentialsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(settings.to_env())
    from . import app  # defines the app from the variables just set

    app.deploy(environment_name=args.environment)
    print(f"deployed {settings.app_name}; use it with ServiceClient(backend='modal', gpu={settings.gpu!r}) or "
          "`tinker-std sft --backend modal ...`")
    return 0
