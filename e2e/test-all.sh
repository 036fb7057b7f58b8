#!/usr/bin/env bash
# `make test`: every check, each phase timed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
phase() {
  local name=$1 start; shift; start=$(date +%s)
  echo "==== phase: $name"
  "$@"
  echo "==== phase: $name done in $(( $(date +%s) - start ))s"
}
total=$(date +%s)
phase "binaries (kubernetes, etcd, coredns, pyspark; cached)" bash e2e/cluster/build-binaries.sh
phase "fmt" cargo fmt --all --check
phase "build" cargo build --workspace --all-targets
phase "clippy" cargo clippy --workspace --all-targets -- -D warnings
phase "unit tests" cargo test --workspace --exclude sco-e2e
phase "world unit tests" cargo test -p sco-e2e --bins
phase "helm lint + template" bash e2e/chart-check.sh
phase "e2e" bash e2e/run-e2e.sh
echo "==== make test: all phases passed in $(( $(date +%s) - total ))s"
