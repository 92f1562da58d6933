#!/usr/bin/env bash
# Refresh the lock of the tested set: .ci/requirements.lock pins every package (all extras, plus the
# tools in .ci/tools.in) for CPU Linux, Python 3.11, with torch pinned to the CPU build 2.13.0.
# Every install script (scripts/setup.sh, so both README commands, .ci/run and bench/) installs from it.
#
#   bash scripts/lock.sh                          # newest versions that pyproject.toml's ranges allow
#   bash scripts/lock.sh --upgrade-package peft   # move one package, keep the rest
#   bash scripts/lock.sh --keep                   # re-resolve, keeping every pin that still fits
#
# Then run `bash scripts/test.sh` (it reinstalls .venv from the new lock) and commit the lock with the
# change only if the suite passes. scripts/check-latest.sh shows what the newest releases would break.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=.ci/requirements.lock
upgrade=(--upgrade)
args=()
for arg in "$@"; do
    case "$arg" in
        --keep) upgrade=() ;;
        --upgrade-package|--upgrade-package=*) upgrade=(); args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
# pip-tools runs pip's resolver, so it sees the same indexes and local wheels as the install scripts.
pins=()
[ -f "$lock" ] && pins=(-c "$lock")
"$tools/venv/bin/python" -m pip install -q "${pins[@]}" pip pip-tools
"$tools/venv/bin/pip-compile" --quiet --all-extras --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --annotation-style line \
    --constraint .ci/torch-cpu.txt --output-file "$lock" \
    "${upgrade[@]}" "${args[@]}" pyproject.toml .ci/tools.in
# The CPU wheel's local label (+cpu) is not on every index; `torch==2.13.0` still selects the local
# CPU build where it lies on disk (pip prefers 2.13.0+cpu over 2.13.0).
sed -i -E 's/^torch==([0-9.]+)\+cpu/torch==\1/' "$lock"
# The torch backend names the tested set in its incompatible-environment error: keep it the lock's.
python3 - backends/torch/environment.py <<'PY'
import re, sys
sys.path.insert(0, "tests")
from lockfile import locked_versions
pins, module = locked_versions(), sys.argv[1]
text = open(module).read()
for name in re.findall(r'^    "([a-z0-9_-]+)": "[^"]+",$', text, re.M):
    text = re.sub(rf'^(    "{name}": ")[^"]+(",)$', rf"\g<1>{pins[name]}\g<2>", text, flags=re.M)
open(module, "w").write(text)
PY
echo "wrote $lock: $(grep -c '==' "$lock") pinned packages"
