#!/usr/bin/env bash
# Shared by the e2e suite, `make run` and the benchmarks: starts the local world in the
# background (with optional forwards), waits until it is ready, starts the operator inside it,
# and stops everything again on exit.
# Usage: source e2e/world.sh; world_start [--forward PORT=HOST:PORT ...]; operator_start; ...
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SCO_CACHE=${SCO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-connect-operator}
export SCO_WORLD=${SCO_WORLD:-$ROOT/target/world}
K8S_VERSION=${K8S_VERSION:-v1.36.3}
PYSPARK_VERSION=${PYSPARK_VERSION:-4.3.0}
export SCO_KUBECTL=$SCO_CACHE/k8s-$K8S_VERSION/bin/kubectl
export SCO_PYTHON=$SCO_CACHE/pyspark-$PYSPARK_VERSION/venv/bin/python
PROFILE=${SCO_PROFILE:-debug}
WORLD_BIN=$ROOT/target/$PROFILE/sco-world
OPERATOR_BIN=$ROOT/target/$PROFILE/spark-connect-operator
# The binaries behind this project's images in the world (see e2e/src/agent/images.rs).
export SCO_SPARK_CONNECT_OPERATOR_BIN=$OPERATOR_BIN
export SCO_SCO_FAKE_CONNECT_BIN=$ROOT/target/$PROFILE/sco-fake-connect
WORLD_PID=

world_stop() {
  if [ -n "$WORLD_PID" ] && kill -0 "$WORLD_PID" 2>/dev/null; then
    kill -TERM "$WORLD_PID" 2>/dev/null || true
    wait "$WORLD_PID" 2>/dev/null || true
  fi
  WORLD_PID=
}

world_start() {
  mkdir -p "$(dirname "$SCO_WORLD")"
  { ip -o addr; ip route; ip rule; } > "$(dirname "$SCO_WORLD")/host-net.before"
  "$WORLD_BIN" --state "$SCO_WORLD" up "$@" > "$(dirname "$SCO_WORLD")/world.out" 2>&1 &
  WORLD_PID=$!
  trap world_stop EXIT
  for _ in $(seq 1 600); do
    if grep -q "world ready" "$(dirname "$SCO_WORLD")/world.out" 2>/dev/null; then
      cat "$(dirname "$SCO_WORLD")/world.out"
      export KUBECONFIG=$SCO_WORLD/kubeconfig
      return 0
    fi
    if ! kill -0 "$WORLD_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "the world did not start:" >&2
  cat "$(dirname "$SCO_WORLD")/world.out" >&2
  tail -n 30 "$SCO_WORLD"/logs/*.log >&2 || true
  return 1
}

# Installs the CRDs and runs the operator inside the world (it must reach the servers it probes).
operator_start() {
  "$SCO_KUBECTL" apply -f "$ROOT/crds/" >/dev/null
  "$SCO_KUBECTL" wait --for=condition=Established crd --all --timeout=60s >/dev/null
  "$WORLD_BIN" --state "$SCO_WORLD" exec -- "$OPERATOR_BIN" run \
    --kubeconfig "$SCO_WORLD/pki/admin.kubeconfig" --admin-addr 127.0.0.1:8080 \
    > "$SCO_WORLD/logs/operator.log" 2>&1 &
  for _ in $(seq 1 100); do
    if "$WORLD_BIN" --state "$SCO_WORLD" exec -- curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "the operator did not become ready:" >&2; cat "$SCO_WORLD/logs/operator.log" >&2; return 1
}
