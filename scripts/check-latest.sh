#!/usr/bin/env bash
# Upstream drift check (not part of CI): install the newest releases that pyproject.toml's ranges allow
# into a scratch venv, run the torch tests and the torch conformance suite there, and print which
# upstream release broke what. `--uncapped` drops the ranges' upper bounds first (can a cap be lifted?).
# See scripts/check_latest.py for the steps; refresh the lock with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/check_latest.py "$@"
