#!/usr/bin/env bash
# The main job: install (into .venv) and run the SFT demo on the default local backend, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/tinker-std demo "$@"
