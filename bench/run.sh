#!/usr/bin/env bash
# `make bench`: every benchmark; results under target/bench/*.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SCO_PROFILE=release
cargo build --release --workspace
./target/release/sco-bench probe --servers 2000 --period-seconds 10 --duration-seconds 60
source e2e/world.sh
world_start
operator_start
./target/release/sco-bench claims --world "$SCO_WORLD" --spark
echo "results:"; ls -l target/bench/
