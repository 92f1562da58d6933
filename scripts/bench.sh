#!/usr/bin/env bash
# Run one benchmark of bench/ in .venv, installed from the lock (the versions the README's figures
# were measured with), e.g.  bash scripts/bench.sh step_overhead --model smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,hf,demo
name="${1:?usage: scripts/bench.sh NAME [ARGS...] (NAME: a file of bench/ without .py)}"
shift
exec .venv/bin/python "bench/${name}.py" "$@"
