#!/usr/bin/env bash
# `make bench`: every benchmark; results under target/bench/*.json. Figures, not assertions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SCO_PROFILE=release
cargo build --release --workspace
rm -rf target/bench
# Pool economics in virtual time (the operator's autoscaler code, a model pool; no world needed).
./target/release/sco-bench simulate
# The same for an organisation: ten and thirty times the arrival rates, a pool allowed as many
# times the servers.
./target/release/sco-bench simulate --rate-scale 10 --output economics-simulated-x10
./target/release/sco-bench simulate --rate-scale 30 --output economics-simulated-x30
# A reconcile's check of its servers' Services and EndpointSlices, whole and by digest (no world).
./target/release/sco-bench publish
# Finding one cluster's objects among many pools': the per-cluster index against a whole-store scan.
./target/release/sco-bench lookup
# The prober alone, against fake servers on loopback addresses (no world needed).
./target/release/sco-bench probe --servers 2000 --period-seconds 10 --duration-seconds 60
./target/release/sco-bench probe --servers 20000 --period-seconds 10 --duration-seconds 60
# The operator in the local world.
source e2e/world.sh
world_start
operator_start
./target/release/sco-bench claims --world "$SCO_WORLD" --spark
./target/release/sco-bench claims --world "$SCO_WORLD" --concurrency 500 --rounds 10 --output claims-500
./target/release/sco-bench economics --world "$SCO_WORLD"
./target/release/sco-bench economics --world "$SCO_WORLD" --rate-scale 10 --output economics-x10
./target/release/sco-bench gateway --world "$SCO_WORLD"
./target/release/sco-bench scale --world "$SCO_WORLD" --clusters 1000 --with-servers 10
echo "results:"; ls -l target/bench/
