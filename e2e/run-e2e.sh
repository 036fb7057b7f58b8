#!/usr/bin/env bash
# The e2e suite: a fresh world, the operator inside it, then the tests in e2e/tests/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/world.sh"
cd "$ROOT"
cargo build --workspace --bins
cargo test --workspace --test world --test probe --test operator --test claims --test ha --test hardening --test faults --test gateway --no-run
world_start
operator_start
cargo test --workspace --no-fail-fast --test world --test probe --test operator --test claims --test ha --test hardening --test faults --test gateway -- --test-threads=1 --nocapture
