#!/usr/bin/env bash
# helm lint, helm template with default values, and a bad value refused by values.schema.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/world.sh"
chart=$ROOT/charts/spark-connect-operator
"$HELM" lint --strict "$chart"
"$HELM" template sco "$chart" --namespace sco-system --kube-version 1.36.3 > "$ROOT/target/chart-rendered.yaml"
echo "helm template: $(grep -c '^kind:' "$ROOT/target/chart-rendered.yaml") objects"
for bad in "replicaCount=0" "image.pullPolicy=Sometimes" "leaderElection.leaseDuration=1" "metrics.prometheusRule.hitRateObjective=2"; do
  if out=$("$HELM" template sco "$chart" --kube-version 1.36.3 --set "$bad" 2>&1); then
    echo "a bad value was accepted: $bad" >&2; exit 1
  fi
  echo "refused as expected: $bad -> $(echo "$out" | grep -m1 -E 'replicaCount|pullPolicy|leaseDuration|hitRateObjective' || echo "$out" | head -1)"
done
# The alerts: every placeholder filled from values.
rule=$("$HELM" template sco "$chart" --kube-version 1.36.3 --show-only templates/prometheusrule.yaml \
  --set metrics.prometheusRule.enabled=true --set-json metrics.prometheusRule.hitRateObjective=0.9 \
  --set metrics.prometheusRule.claimsWaitingFor=20m)
alerts=$(grep -c -- '- alert:' <<<"$rule")
if [ "$alerts" -lt 5 ] || grep -q 'HIT_RATE_OBJECTIVE\|WAITING_FOR' <<<"$rule" \
  || ! grep -q ') < 0.9$' <<<"$rule" || ! grep -q 'claims_waiting\[20m\]' <<<"$rule"; then
  echo "the PrometheusRule did not render as asked:" >&2; echo "$rule" >&2; exit 1
fi
echo "PrometheusRule: $alerts alerts"
