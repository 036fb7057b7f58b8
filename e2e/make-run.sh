#!/usr/bin/env bash
# `make run`: a world, the operator, the example team cluster; prints how to connect from
# this machine and runs until Ctrl-C.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/world.sh"
PORT=${SCO_CONNECT_PORT:-15002}
GATEWAY_PORT=${SCO_GATEWAY_PORT:-15443}
world_start --forward "$PORT=analytics.default.svc.cluster.local:15002" \
  --forward "$GATEWAY_PORT=sco-spark-connect-operator-gateway.$SCO_OPERATOR_NAMESPACE.svc.cluster.local:443"
operator_start
"$SCO_KUBECTL" apply -f "$ROOT/examples/team-cluster.yaml"

# The gateway: a certificate for localhost (the relay) and the in-world name, signed by a CA
# made here, and a user allowed to connect to the team cluster.
PKI=$SCO_WORLD/gateway-pki
"$WORLD_BIN" serving-cert "$PKI" --dns localhost \
  --dns "sco-spark-connect-operator-gateway.$SCO_OPERATOR_NAMESPACE.svc.cluster.local"
"$SCO_KUBECTL" -n "$SCO_OPERATOR_NAMESPACE" create secret tls sco-gateway-tls --cert "$PKI/tls.crt" --key "$PKI/tls.key" >/dev/null
"$SCO_KUBECTL" create serviceaccount demo >/dev/null
"$SCO_KUBECTL" create rolebinding demo-connects --clusterrole sparkconnect-user --serviceaccount default:demo >/dev/null
TOKEN=$("$SCO_KUBECTL" create token demo --audience spark-connect-gateway --duration 24h)
echo "waiting for the team cluster (a Spark driver takes 20-60 s to start) ..."
"$SCO_KUBECTL" wait --for=condition=Ready scc/analytics --timeout=600s
"$SCO_KUBECTL" get scc,pods -o wide
cat <<MSG

The team cluster is Ready. Its endpoint inside the cluster: sc://analytics.default.svc.cluster.local:15002
From this machine it is relayed to: sc://localhost:$PORT

Try it (paste on this machine):
  $SCO_PYTHON -c "from pyspark.sql import SparkSession; s = SparkSession.builder.remote('sc://localhost:$PORT').getOrCreate(); s.range(1000).selectExpr('id % 3 as k').groupBy('k').count().show()"

Through the gateway, as ServiceAccount default/demo (TLS, TokenReview, RBAC, audited; its
audit lines are in $SCO_WORLD/pods/${SCO_OPERATOR_NAMESPACE}_sco-spark-connect-operator-gateway-*/log):
  GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=$PKI/ca.crt $SCO_PYTHON -c "from pyspark.sql import SparkSession; s = SparkSession.builder.remote('sc://localhost:$GATEWAY_PORT/;use_ssl=true;token=$TOKEN;cluster=analytics.default').getOrCreate(); s.sql('SELECT 1 AS one').show()"

kubectl:   KUBECONFIG=$KUBECONFIG $SCO_KUBECTL get scc,scclaim,pods
Logs:      control plane in $SCO_WORLD/logs/, every pod (the operator's in ${SCO_OPERATOR_NAMESPACE}_*) in $SCO_WORLD/pods/*/log
Press Ctrl-C to stop and clean up.
MSG
wait "$WORLD_PID"
