"""Installs as a user would (slow tier; needs the package registry).

* The built wheel with the ``hf`` extra in an empty virtual environment trains a step and samples.
  By default it installs from the lock (``.ci/requirements.lock``), and the results must equal this
  environment's to the bit; with ``TINKER_STD_INSTALL_RESOLVE=latest`` (``scripts/check-latest.sh``)
  pip resolves ``pyproject.toml``'s ranges freshly, exactly like ``pip install 'tinker-std[hf]'``.
* A transformers/peft pair that cannot attach LoRA stops the torch backend at start with
  ``IncompatibleEnvironmentError`` naming both versions and the fix.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lockfile import LOCK, REPO, locked_versions

pytestmark = pytest.mark.slow

CHECK = Path(__file__).with_name("install_check.py")
LATEST = os.environ.get("TINKER_STD_INSTALL_RESOLVE") == "latest"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    command = " ".join(map(str, cmd))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _offline_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TINKER_STD_CACHE_DIR=str(tmp / "cache"), **extra)
    return env


def _check(python: str, tmp: Path, **extra: str) -> dict[str, object]:
    """Run ``install_check.py`` with ``python`` in a new folder ``tmp`` (its cache and checkpoints)."""
    tmp.mkdir()
    out = _run([python, str(CHECK), str(tmp / "ckpt")], cwd=tmp, env=_offline_env(tmp, **extra)).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_wheel_with_hf_extra_trains_and_samples_in_an_empty_venv(tmp_path: Path) -> None:
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)])
    (wheel,) = (tmp_path / "dist").glob("tinker_std-*.whl")
    venv = tmp_path / "venv"
    _run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", str(venv)])
    pins = [] if LATEST else ["-c", str(LOCK)]
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *pins, "torch==2.13.0", f"{wheel}[hf]"])

    fresh = _check(str(venv / "bin" / "python"), tmp_path / "fresh")
    assert str(fresh["module"]).startswith(str(venv)), "the wheel, not the source tree, was imported"
    losses = fresh["losses"]
    assert isinstance(losses, list) and all(math.isfinite(x) for x in losses)
    assert losses[1] < losses[0], f"one AdamW step at lr 1e-2 should lower the loss: {losses}"
    assert [len(t) for t in fresh["tokens"]] == [8, 8]  # type: ignore[union-attr]
    if LATEST:
        print("resolved:", fresh["versions"])
        return
    pins_now = locked_versions()
    versions = fresh["versions"]
    assert isinstance(versions, dict)
    for name in ("torch", "transformers", "peft"):
        assert versions[name].split("+")[0] == pins_now[name]
    here = _check(sys.executable, tmp_path / "here")
    # Same versions, same CPU, float32: the wheel's results are this environment's, bit for bit.
    for key in ("losses", "tokens", "logprobs"):
        assert fresh[key] == here[key], key


@pytest.mark.parametrize(
    ("overlay", "needs"),
    [
        # The incident of 2026-12-04: transformers 5.25.0 requires peft>=0.22.0, newest peft 0.21.2.
        ("transformers==5.25.0", "peft>=0.22.0"),
        # The locked transformers (which requires peft>=0.20.0) with an older peft.
        ("peft==0.17.0", None),
    ],
)
def test_incompatible_pair_fails_at_backend_start(tmp_path: Path, overlay: str, needs: str | None) -> None:
    from packaging.requirements import Requirement

    if needs is not None and Requirement(needs).specifier.contains(locked_versions()["peft"]):
        pytest.skip(f"the locked peft now satisfies {needs}: {overlay} is no longer a broken pair")
    overlay_dir = tmp_path / "overlay"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(overlay_dir), overlay])
    script = (
        "import json, tinker_std as ts\n"
        "try:\n"
        "    ts.ServiceClient(backend='torch')\n"
        "except ts.IncompatibleEnvironmentError as e:\n"
        "    print(json.dumps({'message': str(e), 'installed': e.installed, 'fix': e.fix}))\n"
    )
    env = _offline_env(tmp_path, PYTHONPATH=str(overlay_dir))
    out = _run([sys.executable, "-c", script], cwd=tmp_path, env=env).stdout.strip()
    assert out, "no IncompatibleEnvironmentError at ServiceClient(backend='torch')"
    report = json.loads(out.splitlines()[-1])
    name, version = overlay.split("==")
    installed = report["installed"]
    assert installed[name] == version
    other = "peft" if name == "transformers" else "transformers"
    assert installed[other] == locked_versions()[other]
    assert f"transformers {installed['transformers']} requires peft" in report["message"]
    assert f"peft {installed['peft']} is installed" in report["message"]
    pins = locked_versions()
    assert report["fix"] == f"pip install 'transformers=={pins['transformers']}' 'peft=={pins['peft']}'"
