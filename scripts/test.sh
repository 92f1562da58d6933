#!/usr/bin/env bash
# Install (into .venv) and run every check: ruff, mypy, the test suite, and the conformance suite
# against each in-repo backend (its reports must match the README's compliance matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,hf,server,modal,cookbook-compat
# The test models are tiny: one intra-op thread is fastest, and it keeps the OpenMP pools of the test
# thread and the client's loop thread from spinning against each other on a loaded 2-core machine.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
    echo "== slow tier: installs as a user would (fresh venvs from the built wheel), real-model checks"
    .venv/bin/python -m pytest -q -m slow
fi

reports=.ci-reports
rm -rf "$reports" && mkdir -p "$reports"
# modal runs offline: its real Modal class in-process through Modal's .local() path (docs/modal.md).
# tinker-mock / tinker-torch: the tinker backend, i.e. the official SDK over loopback HTTP to a
# tinker-std server in the same process backed by mock / torch (reports "tinker (mock)" / "tinker (torch)").
for backend in ${CONFORMANCE_BACKENDS:-mock minimal torch fsdp modal tinker-mock tinker-torch}; do
    case "$backend" in
        tinker-mock) spec=tinker_std.backends.tinker:TinkerMockBackend ;;
        tinker-torch) spec=tinker_std.backends.tinker:TinkerTorchBackend ;;
        *) spec=$backend ;;
    esac
    echo "== conformance suite on backend '$backend'"
    TINKER_STD_MODAL_OFFLINE=1 TINKER_TELEMETRY=0 .venv/bin/python -m tinker_std.conformance --backend "$spec" \
        --report "$reports/$backend.json" -- -q | tail -n 3
done
if [ -n "${CI:-}" ]; then
    .venv/bin/python -m tinker_std.conformance.matrix "$reports"/*.json --readme README.md --check
else
    .venv/bin/python -m tinker_std.conformance.matrix "$reports"/*.json --readme README.md --write
fi
