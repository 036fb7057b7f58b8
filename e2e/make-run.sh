#!/usr/bin/env bash
# `make run`: a world, the operator, the example team cluster; prints how to connect from
# this machine and runs until Ctrl-C.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/world.sh"
PORT=${SCO_CONNECT_PORT:-15002}
world_start --forward "$PORT=analytics.default.svc.cluster.local:15002"
operator_start
"$SCO_KUBECTL" apply -f "$ROOT/examples/team-cluster.yaml"
echo "waiting for the team cluster (a Spark driver takes 20-60 s to start) ..."
"$SCO_KUBECTL" wait --for=condition=Ready scc/analytics --timeout=600s
"$SCO_KUBECTL" get scc,pods -o wide
cat <<MSG

The team cluster is Ready. Its endpoint inside the cluster: sc://analytics.default.svc.cluster.local:15002
From this machine it is relayed to: sc://localhost:$PORT

Try it (paste on this machine):
  $SCO_PYTHON -c "from pyspark.sql import SparkSession; s = SparkSession.builder.remote('sc://localhost:$PORT').getOrCreate(); s.range(1000).selectExpr('id % 3 as k').groupBy('k').count().show()"

kubectl:   KUBECONFIG=$KUBECONFIG $SCO_KUBECTL get scc,scclaim,pods
Logs:      control plane in $SCO_WORLD/logs/, every pod (the operator's in ${SCO_OPERATOR_NAMESPACE}_*) in $SCO_WORLD/pods/*/log
Press Ctrl-C to stop and clean up.
MSG
wait "$WORLD_PID"
