#!/usr/bin/env bash
# helm lint, helm template with default values, and a bad value refused by values.schema.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/world.sh"
chart=$ROOT/charts/spark-connect-operator
"$HELM" lint --strict "$chart"
"$HELM" template sco "$chart" --namespace sco-system --kube-version 1.36.3 > "$ROOT/target/chart-rendered.yaml"
echo "helm template: $(grep -c '^kind:' "$ROOT/target/chart-rendered.yaml") objects"
for bad in "replicaCount=0" "image.pullPolicy=Sometimes" "leaderElection.leaseDuration=1"; do
  if out=$("$HELM" template sco "$chart" --kube-version 1.36.3 --set "$bad" 2>&1); then
    echo "a bad value was accepted: $bad" >&2; exit 1
  fi
  echo "refused as expected: $bad -> $(echo "$out" | grep -m1 -E 'replicaCount|pullPolicy|leaseDuration' || echo "$out" | head -1)"
done
