"""Upstream drift, seen before it is suffered (run by ``scripts/check-latest.sh``; stdlib only).

1. Installs tinker-std into a scratch virtual environment with the newest releases that
   ``pyproject.toml``'s ranges allow: what ``pip install 'tinker-std[hf]'`` gives a user today
   (torch stays the CPU build 2.13.0). With ``--uncapped`` the upper bounds of the ranges are dropped
   first, to see whether a cap can be lifted.
2. Prints every package whose version differs from the lock (``.ci/requirements.lock``).
3. Runs the torch tests and the conformance suite on ``torch`` there.
4. If anything fails, installs the locked set again with one moved package at a time at its new
   version and reruns the failed tests, so the output names the release that broke each test.

Not part of CI: an upstream release must never stop the project from landing. Exit status 0 when the
newest set passes, 1 when something fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lockfile import LOCK, PIN, REPO, canonical, locked_versions  # stdlib only

EXTRAS = "test,hf,server"
TORCH = "torch==2.13.0"
TESTS = [
    "tests/test_environment.py",
    "tests/test_torch_backend.py",
    "tests/test_torch_checkpoints.py",
    "tests/test_torch_multi_tenant.py",
    "tests/test_torch_sampler.py",
    "tests/test_torch_sampling.py",
    "tests/test_torch_training.py",
    "tests/test_cookbook_torch.py",
    "tests/test_server_sdk.py",
    "tests/test_install.py",
]


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def installed(python: Path) -> dict[str, str]:
    out = run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, check=True).stdout
    return {canonical(d["name"]): d["version"].split("+")[0] for d in json.loads(out)}


def uncapped_tree(dest: Path) -> Path:
    """A copy of the source tree whose pyproject.toml has no upper bounds (``<`` / ``<=``) on dependencies."""
    tree = dest / "src"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.egg-info", "build"))
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    text = re.sub(r'("[A-Za-z0-9_.-]+[^"]*?),\s*<=?\s*[0-9][^",]*"', r'\1"', text)
    pyproject.write_text(text)
    return tree


def pytest(python: Path, args: list[str], tree: Path) -> set[str]:
    """Run pytest (the slow tier included); the node ids that failed or errored."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TINKER_STD_INSTALL_RESOLVE="latest",
    )
    result = run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow", "-rfE", *args],
        cwd=tree,
        env=env,
        capture_output=True,
    )
    print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M))
    if result.returncode not in (0, 1) and not failed:
        failed.add(f"<pytest exited with {result.returncode}>")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncapped", action="store_true", help="drop the upper bounds of pyproject.toml's ranges")
    parser.add_argument("--venv", type=Path, help="scratch venv to use (default: a new temporary one)")
    parser.add_argument("--no-bisect", action="store_true", help="skip step 4")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tinker-std-latest-"))
    tree = uncapped_tree(work) if args.uncapped else REPO
    venv = args.venv or work / "venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--upgrade",
            "--upgrade-strategy",
            "eager",
            TORCH,
            "-e",
            f"{tree}[{EXTRAS}]",
        ],
        check=True,
    )

    pins, now = locked_versions(), installed(python)
    moved = {
        name: (pins[name], version)
        for name, version in sorted(now.items())
        if name in pins and pins[name] != version and name not in ("pip", "setuptools")
    }
    print("\n== newest releases the ranges allow, against the lock")
    for name, (old, new) in moved.items():
        print(f"  {name}: {old} -> {new}")
    if not moved:
        print("  nothing moved")

    tests = [str(tree / t) if tree != REPO else t for t in TESTS]
    failed = pytest(python, tests, tree)
    conformance = run(
        [str(python), "-m", "tinker_std.conformance", "--backend", "torch", "--", "-q"],
        cwd=tree,
        env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
    )
    if conformance.returncode != 0:
        failed.add("conformance suite on torch")
    print("\n== result with the newest set")
    if not failed:
        print("  all passed: the lock can move (bash scripts/lock.sh, then bash scripts/test.sh)")
        return 0
    for test in sorted(failed):
        print(f"  FAILED {test}")

    if args.no_bisect or not moved:
        return 1
    print("\n== which release breaks what (the locked set with one package moved)")
    rerun = sorted(t for t in failed if "::" in t)
    blame: dict[str, list[str]] = {}
    for name, (old, new) in moved.items():
        constraints = work / f"lock-without-{name}.txt"
        lines = [
            line
            for line in LOCK.read_text().splitlines()
            if not (PIN.match(line.strip()) and canonical(PIN.match(line.strip()).group(1)) == name)
        ]  # type: ignore[union-attr]
        constraints.write_text("\n".join([*lines, f"{name}=={new}", ""]))
        ok = run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), TORCH, "-e", f"{tree}[{EXTRAS}]"])
        if ok.returncode != 0:
            print(f"  {name} {new}: cannot be installed beside the rest of the lock (it needs other moves)")
            continue
        broke = pytest(python, rerun, tree) if rerun else set()
        blame[name] = sorted(broke)
        verdict = f"breaks {len(broke)} of the {len(rerun)} failed tests" if broke else "breaks none of them"
        print(f"  {name} {old} -> {new}: {verdict}")
        for test in sorted(broke)[:10]:
            print(f"      {test}")
    unexplained = set(rerun) - {t for tests in blame.values() for t in tests}
    if unexplained:
        print(f"  {len(unexplained)} failed tests fail only with several packages moved together")
    return 1


if __name__ == "__main__":
    sys.exit(main())
