"""``tinker-std modal serve``: the tinker-std HTTP server (the official ``tinker`` SDK's protocol) as
a Modal web endpoint, so code written for ``tinker`` trains on Modal GPUs by setting ``base_url``.

A separate app (``<app_name>-http``) with one ASGI web function on the same image and Volumes as
``app.py``. In its container the server talks to a torch backend in-process (no second hop); every
checkpoint it writes is committed to the checkpoint Volume. The ASGI app comes from
``tinker_std.server.asgi.create_app(service, api_key=...)``, imported lazily inside the container
(the ASGI server lives in ``tinker_std/server``).
"""

# No `from __future__ import annotations`, as in app.py.
import os
from typing import Any

import modal

from .app import checkpoints_volume, image, models_volume, settings
from .settings import CHECKPOINT_MOUNT, MODELS_MOUNT

__all__ = ["web_app", "http_server", "create_asgi_app", "deploy"]

web_app = modal.App(f"{settings.app_name}-http")
_secrets = [
    modal.Secret.from_name(name)
    for name in (settings.hf_secret, os.environ.get("TINKER_STD_MODAL_API_KEY_SECRET"))
    if name
]


def create_asgi_app(checkpoint_dir: str, after_write: Any, api_key: str | None) -> Any:
    """The ASGI app the endpoint mounts: the tinker-std server over a committing torch backend."""
    import tinker_std as ts
    from tinker_std.server.asgi import create_app  # the ASGI server (FastAPI/Starlette) of tinker_std.server

    from .service import committing_torch_backend

    backend = committing_torch_backend(after_write, checkpoint_dir=checkpoint_dir)
    return create_app(ts.ServiceClient(backend), api_key=api_key)


@web_app.function(
    image=image,
    volumes={CHECKPOINT_MOUNT: checkpoints_volume, MODELS_MOUNT: models_volume},
    secrets=_secrets,
    serialized=True,
    **settings.cls_options(),
)
@modal.concurrent(max_inputs=settings.max_inputs)
@modal.asgi_app(label=f"{settings.app_name}-http")
def http_server() -> Any:
    in_container = not modal.is_local()
    return create_asgi_app(
        CHECKPOINT_MOUNT if in_container else os.environ.get("TINKER_STD_CHECKPOINT_DIR", CHECKPOINT_MOUNT),
        checkpoints_volume.commit if in_container else (lambda: None),
        os.environ.get("TINKER_STD_API_KEY"),
    )


def deploy(environment_name: str | None = None) -> None:
    """Deploy the HTTP endpoint (needs Modal credentials and network); Modal prints its URL."""
    with modal.enable_output():
        web_app.deploy(name=f"{settings.app_name}-http", environment_name=environment_name)
