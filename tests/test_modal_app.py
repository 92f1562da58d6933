"""The Modal app definition, the credential check, ``tinker-std modal deploy`` and the opt-in live test.

The app is inspected through what Modal itself recorded when ``app.py`` was imported (the class's
function spec and build settings, and the Dockerfile commands of each image layer): Modal exposes
no public reader for them, so these tests read modal 1.6's internals (the extra pins ``<1.7``).
Each import runs in a fresh interpreter because Modal defines the app when the module is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("modal")

from tinker_std.backends.modal.service import METHODS
from tinker_std.backends.modal.settings import ContainerSettings, image_requirements

_DESCRIBE = r"""
import json
from modal._utils.async_utils import synchronizer
from tinker_std.backends.modal import app as m

def cells(fn):
    return {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__ or [])}

service = synchronizer._translate_in(m.TinkerStdTrainer._get_class_service_function())
build = cells(service._load)
layers, image = [], synchronizer._translate_in(m.image)
while image is not None:
    closure = cells(image._load)
    layers.append(closure["dockerfile_function"]("2025.06").commands)
    bases = list((closure.get("base_images") or {}).values())
    image = bases[0] if bases else None
volumes = {str(path): synchronizer._translate_in(v)._name for path, v in service._spec.volumes.items()}
print(json.dumps({
    "app": m.app.name,
    "gpu": service._spec.gpus,
    "volumes": volumes,
    "timeout": build["timeout"],
    "scaledown_window": build["scaledown_window"],
    "max_containers": build["max_containers"],
    "max_inputs": build["max_concurrent_inputs"],
    "region": build["scheduler_placement"].regions[0] if build["scheduler_placement"] else None,
    "methods": sorted(m.TinkerStdTrainer._get_method_names()),
    "layers": layers,
}))
"""


def _isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Modal credentials, no ~/.modal.toml: HOME and the config path point into tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "TINKER_STD_MODAL_"))}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "absent.toml"), **extra)
    return env


def _describe(tmp_path: Path, **settings_env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _DESCRIBE],
        env=_isolated_env(tmp_path, **settings_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_default_app_definition(tmp_path: Path) -> None:
    app = _describe(tmp_path)
    assert app["app"] == "tinker-std"
    assert app["gpu"] == "H100"
    assert app["volumes"] == {"/checkpoints": "tinker-std-checkpoints", "/models": "tinker-std-models"}
    assert (app["timeout"], app["scaledown_window"], app["max_containers"], app["max_inputs"]) == (3600, 600, 1, 32)
    assert app["region"] is None
    assert app["methods"] == sorted(METHODS)
    commands = [command for layer in app["layers"] for command in layer]
    assert "FROM python:3.11" in " ".join(commands)
    pip = next(c for c in commands if c.startswith("RUN python -m pip install"))
    for requirement in image_requirements():  # the engine's packages at the versions installed here
        assert requirement in pip.split()
    assert any(r.startswith("torch==") and "+" not in r for r in pip.split())  # no +cpu label: CUDA wheel
    assert "RUN pip install --no-deps /opt/tinker-std" in commands  # this checkout, installed in the image
    assert "ENV HF_HOME=/models/huggingface" in commands
    assert "ENV TINKER_STD_CHECKPOINT_DIR=/checkpoints" in commands
    assert "ENV TINKER_STD_MODAL_GPU=H100" in commands  # the container's import of app.py sees the same settings


def test_settings_choose_gpu_count_region_and_timeouts(tmp_path: Path) -> None:
    settings = ContainerSettings(
        gpu="A100-80GB",
        gpu_count=2,
        region="us-east",
        timeout=1800,
        scaledown_window=120,
        max_inputs=4,
        app_name="ts-test",
    )
    app = _describe(tmp_path, **settings.to_env())
    assert app["app"] == "ts-test"
    assert app["gpu"] == "A100-80GB:2"
    assert app["region"] == "us-east"
    assert (app["timeout"], app["scaledown_window"], app["max_containers"], app["max_inputs"]) == (1800, 120, 1, 4)


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="gpu_count"):
        ContainerSettings(gpu="H100", gpu_count=0)
    with pytest.raises(ValueError, match="count goes in gpu_count"):
        ContainerSettings(gpu="H100:2")


_CONSTRUCT = r"""
import time, tinker_std as ts
from tinker_std.backends.modal import ModalCredentialsError
start = time.monotonic()
try:
    ts.ServiceClient(backend="modal", gpu="H100")
except ModalCredentialsError as exc:
    print("RAISED", round(time.monotonic() - start, 2), exc)
else:
    print("CONSTRUCTED")
"""


def test_no_credentials_fails_at_once_saying_what_to_set(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CONSTRUCT], env=_isolated_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("RAISED"), out.stdout
    for hint in ("modal token new", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "offline=True"):
        assert hint in out.stdout
    assert "Traceback" not in out.stderr


def test_with_a_token_construction_contacts_nothing(tmp_path: Path) -> None:
    """Construction only reads configuration; with a (fake) token it succeeds, no network is tried."""
    env = _isolated_env(tmp_path, MODAL_TOKEN_ID="ak-test", MODAL_TOKEN_SECRET="as-test")
    out = subprocess.run([sys.executable, "-c", _CONSTRUCT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CONSTRUCTED"


def test_cli_deploy_dry_run_and_credential_error(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "tinker_std.cli", "modal", "deploy", "--gpu", "L40S", "--region", "eu-west"]
    dry = subprocess.run([*cli, "--dry-run"], env=_isolated_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert (plan["gpu"], plan["region"], plan["max_containers"]) == ("L40S", "eu-west", 1)
    assert plan["image"]["pip"] == image_requirements()
    real = subprocess.run(cli, env=_isolated_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert real.returncode == 2
    assert "modal token new" in real.stderr and "Traceback" not in real.stderr


@pytest.mark.skipif(
    os.environ.get("TINKER_STD_MODAL_LIVE") != "1",
    reason="live Modal test: set TINKER_STD_MODAL_LIVE=1 (and Modal credentials) to run it",
)
def test_live_ephemeral_app_trains_and_samples() -> None:  # pragma: no cover - needs Modal and network
    """Opt-in only (never merely because a token exists): an ephemeral app on a real GPU."""
    import tinker_std as ts

    client = ts.ServiceClient(backend="modal", ephemeral=True, gpu=os.environ.get("TINKER_STD_MODAL_LIVE_GPU", "T4"))
    try:
        tc = client.create_lora_training_client(base_model="tiny-llama", rank=4).result()
        datum = ts.Datum(
            model_input=ts.ModelInput.from_ints([3, 17, 42, 99]),
            loss_fn_inputs={"target_tokens": [17, 42, 99, 7], "weights": [1.0] * 4},
        )
        losses = []
        for _ in range(3):
            losses.append(tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"])
            tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
        assert losses[-1] < losses[0]
        path = tc.save_state("live").result().path
        assert path.startswith("tinker://")
        sampler = tc.save_weights_and_get_sampling_client().result()
        out = sampler.sample(
            ts.ModelInput.from_ints([3, 17]), num_samples=2, sampling_params=ts.SamplingParams(max_tokens=4, seed=0)
        ).result()
        assert len(out.sequences) == 2
    finally:
        client.close()


_DESCRIBE_WEB = r"""
import json
from modal._utils.async_utils import synchronizer
from tinker_std.backends.modal import web

fn = synchronizer._translate_in(web.http_server)
build = {n: c.cell_contents for n, c in zip(fn._load.__code__.co_freevars, fn._load.__closure__ or [])}
print(json.dumps({
    "app": web.web_app.name,
    "gpu": fn._spec.gpus,
    "volumes": sorted(str(p) for p in fn._spec.volumes),
    "web": build["webhook_config"] is not None and build["webhook_config"].type,
    "max_containers": build["max_containers"],
}))
"""


def test_http_endpoint_definition(tmp_path: Path) -> None:
    """``tinker-std modal serve``'s app: an ASGI web function on a GPU with both Volumes mounted."""
    import modal  # noqa: F401  (the extra is installed)
    from modal_proto import api_pb2

    out = subprocess.run(
        [sys.executable, "-c", _DESCRIBE_WEB],
        env=_isolated_env(tmp_path, TINKER_STD_MODAL_GPU="L4"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    web = json.loads(out.stdout.strip().splitlines()[-1])
    assert web == {
        "app": "tinker-std-http",
        "gpu": "L4",
        "volumes": ["/checkpoints", "/models"],
        "web": api_pb2.WEBHOOK_TYPE_ASGI_APP,
        "max_containers": 1,
    }


def test_http_endpoint_backend_commits_after_every_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint's backend calls the Volume commit after each save (here a counter: offline, the
    real commit is guarded off)."""
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path / "cache"))
    import tinker_std as ts
    from tinker_std.backends.modal.service import committing_torch_backend

    commits: list[int] = []
    backend = committing_torch_backend(
        lambda: commits.append(1), checkpoint_dir=str(tmp_path), dtype="float32", device="cpu"
    )
    assert backend.capabilities.tolerance == "fp32"
    with ts.ServiceClient(backend) as service:
        tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result()
        assert commits == []
        tc.save_state("a").result()
        tc.save_weights_for_sampler("b").result()
    assert commits == [1, 1]


def test_http_endpoint_serves_the_asgi_app_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASGI app Modal would mount, built through the web function's ``.local()`` path."""
    pytest.importorskip("tinker_std.server.asgi", reason="tinker_std.server.asgi (the ASGI server) is not here yet")
    monkeypatch.setenv("TINKER_STD_CHECKPOINT_DIR", str(tmp_path))
    from tinker_std.backends.modal import web

    asgi = web.http_server.local()
    assert callable(asgi)
