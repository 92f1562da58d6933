#!/usr/bin/env bash
# Install (into .venv) and run every check: ruff (lint, format), mypy, the test suite, and the conformance suite
# against each in-repo backend (its certificates must match conformance/results/ and the README's matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,hf,server,modal,cookbook-compat,tensorboard
# The test models are tiny: one intra-op thread is fastest, and it keeps the OpenMP pools of the test
# thread and the client's loop thread from spinning against each other on a loaded 2-core machine.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
    echo "== slow tier: installs as a user would (fresh venvs from the built wheel), real-model checks"
    .venv/bin/python -m pytest -q -m slow
fi

# The conformance suite against each in-repo backend, as a certificate (report.json, summary.md,
# badge.svg, digest; spec/implementing-a-backend.md "From zero to a certificate"). Locally the fresh
# certificates replace ours in conformance/results/ and the README matrix is regenerated from that
# folder (third-party certificates there included); in CI each fresh certificate must have the digest
# of the committed one (the digest leaves out the machine, commit and durations), and the matrix must
# be current.
fresh=.ci-reports/certificates  # .ci-reports/ also holds what the tests wrote (mutation.json): keep it
results=conformance/results
rm -rf "$fresh" && mkdir -p "$fresh"
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
        --certify "$fresh/$backend" -- -q -p no:cacheprovider | tail -n 3
    if [ -n "${CI:-}" ]; then
        .venv/bin/python -m tinker_std.conformance.certificate compare "$fresh/$backend" "$results/$backend"
    else
        rm -rf "${results:?}/$backend" && cp -r "$fresh/$backend" "$results/$backend"
    fi
done
if [ -n "${CI:-}" ]; then
    .venv/bin/python -m tinker_std.conformance.matrix --results "$results" --readme README.md --check
else
    .venv/bin/python -m tinker_std.conformance.matrix --results "$results" --readme README.md --write
fi
