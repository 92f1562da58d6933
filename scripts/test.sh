#!/usr/bin/env bash
# Install (into .venv) and run every check: ruff, mypy, the test suite, and the conformance suite
# against each in-repo backend (its reports must match the README's compliance matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"

reports=.ci-reports
rm -rf "$reports" && mkdir -p "$reports"
for backend in ${CONFORMANCE_BACKENDS:-mock}; do
    echo "== conformance suite on backend '$backend'"
    .venv/bin/python -m tinker_std.conformance --backend "$backend" --report "$reports/$backend.json" -- -q \
        | tail -n 3
done
if [ -n "${CI:-}" ]; then
    .venv/bin/python -m tinker_std.conformance.matrix "$reports"/*.json --readme README.md --check
else
    .venv/bin/python -m tinker_std.conformance.matrix "$reports"/*.json --readme README.md --write
fi
