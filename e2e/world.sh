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
OPA_AUTHZ_SRC=$ROOT/e2e/opa-authz
export SCO_SCO_OPA_AUTHZ_BIN=$SCO_CACHE/opa-authz-$(cat "$OPA_AUTHZ_SRC"/go.mod "$OPA_AUTHZ_SRC"/go.sum "$OPA_AUTHZ_SRC"/main.go | sha256sum | cut -c1-12)/sco-opa-authz
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
  # Emptied here, before the world starts in the background: a "world ready" left by an
  # earlier world must not pass for this one's.
  : > "$(dirname "$SCO_WORLD")/world.out"
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

HELM=$SCO_CACHE/helm-${HELM_VERSION:-v3.21.4}/bin/helm
export SCO_OPERATOR_NAMESPACE=sco-system

# Prints why a chart install did not become ready: each pod's readiness, the Deployments'
# rollout, recent Events and the tail of every operator-namespace pod's log.
operator_install_report() {
  echo "the chart did not become ready in time:" >&2
  "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get deployments,pods -o wide >&2 || true
  "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get pods \
    -o jsonpath='{range .items[*]}{.metadata.name}{" ready="}{.status.conditions[?(@.type=="Ready")].status}{" "}{.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}' >&2 || true
  "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
  for log in "$SCO_WORLD"/pods/"$SCO_OPERATOR_NAMESPACE"_*/log; do
    [ -f "$log" ] || continue
    echo "--- $log" >&2
    tail -n 20 "$log" >&2
  done
}

# Installs the operator with its Helm chart (CRDs, RBAC, two replicas with leader election):
# it runs as pods inside the world under the chart's ServiceAccount, so a missing RBAC rule
# fails the e2e suite.
operator_start() {
  # The policy engine the gateway asks through ext_authz (see e2e/cluster/opa-authz.yaml).
  "$SCO_KUBECTL" create namespace "$SCO_OPERATOR_NAMESPACE" >/dev/null 2>&1 || true
  "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" apply -f "$ROOT/e2e/cluster/opa-authz.yaml" >/dev/null
  "$HELM" install sco "$ROOT/charts/spark-connect-operator" --namespace "$SCO_OPERATOR_NAMESPACE" --create-namespace \
    --set image.repository=spark-connect-operator --set image.tag=dev --set logJson=false \
    --set gateway.enabled=true --set gateway.tls.secretName=sco-gateway-tls \
    --set gateway.jwt.issuer=https://idp.sco.test --set gateway.jwt.jwksSecret=sco-gateway-jwks \
    --set gateway.jwt.namespaceClaim=team --set gateway.auditSql=text --set gateway.claimWait=60s \
    --set gateway.extAuthz.address=http://sco-opa-authz.$SCO_OPERATOR_NAMESPACE.svc.cluster.local:9191 \
    --wait --timeout 180s || { operator_install_report; return 1; }
  "$SCO_KUBECTL" wait --for=condition=Established crd --all --timeout=60s >/dev/null
  for _ in $(seq 1 300); do
    if "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get lease spark-connect-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | grep -q .; then
      echo "operator leader: $("$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get lease spark-connect-operator -o jsonpath='{.spec.holderIdentity}')"
      return 0
    fi
    sleep 0.2
  done
  echo "no operator became the leader:" >&2
  "$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" get pods -o wide >&2
  tail -n 40 "$SCO_WORLD"/pods/"$SCO_OPERATOR_NAMESPACE"_*/log >&2 || true
  return 1
}
