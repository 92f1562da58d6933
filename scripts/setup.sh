#!/usr/bin/env bash
# Create .venv (if missing) and install tinker-std with the given extras, torch pinned to the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c .ci/constraints.txt torch==2.13.0 -e ".[${extras}]"
