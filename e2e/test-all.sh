#!/usr/bin/env bash
# `make test`: every check, each phase timed. The cached binaries (Kubernetes, etcd, CoreDNS,
# helm, pyspark) build in the background while the Rust phases run; a second run finds them cached.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target
phase() {
  local name=$1 start; shift; start=$(date +%s)
  echo "==== phase: $name"
  "$@"
  echo "==== phase: $name done in $(( $(date +%s) - start ))s"
}
total=$(date +%s)
# One-off builds gain nothing from incremental state, which would double the target directory.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
binaries_log=target/build-binaries.log
bash e2e/cluster/build-binaries.sh > "$binaries_log" 2>&1 &
binaries=$!
phase "fmt" cargo fmt --all --check
phase "build" cargo build --workspace --all-targets
phase "clippy" cargo clippy --workspace --all-targets -- -D warnings
# Every cargo call selects the whole workspace: the same feature set, so one build serves all.
phase "unit tests" cargo test --workspace --lib --bins --test crds --test alerts
start=$(date +%s)
echo "==== phase: binaries (kubernetes, etcd, coredns, helm, pyspark; cached)"
if ! wait "$binaries"; then cat "$binaries_log"; echo "building the binaries failed" >&2; exit 1; fi
cat "$binaries_log"
echo "==== phase: binaries done (waited $(( $(date +%s) - start ))s more)"
phase "helm lint + template" bash e2e/chart-check.sh
phase "e2e" bash e2e/run-e2e.sh
echo "==== make test: all phases passed in $(( $(date +%s) - total ))s"
