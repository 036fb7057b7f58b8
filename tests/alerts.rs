//! The chart's alerts (`files/alerts.yaml`, with the values' defaults filled in) are valid
//! PromQL and name only metrics the operator or the gateway exports: an alert on a misspelt
//! metric never fires.

use std::collections::BTreeSet;

use promql_parser::parser::{self, Expr};
use serde_yaml::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/spark-connect-operator");

/// Metrics of other exporters that an alert may read.
const SCRAPE_METRICS: &[&str] = &["up"];

/// The alert rules as the chart renders them with its default values.
fn rules() -> Vec<Value> {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let rule = &values["metrics"]["prometheusRule"];
    let objective = rule["hitRateObjective"].as_f64().expect("hitRateObjective");
    let waiting_for = rule["claimsWaitingFor"].as_str().expect("claimsWaitingFor");
    let text = std::fs::read_to_string(format!("{CHART}/files/alerts.yaml"))
        .expect("files/alerts.yaml")
        .replace("HIT_RATE_OBJECTIVE", &objective.to_string())
        .replace("WAITING_FOR", waiting_for);
    let alerts: Value = serde_yaml::from_str(&text).expect("alerts.yaml parses");
    alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// Every metric name an expression selects.
fn selected(expr: &Expr, names: &mut BTreeSet<String>) {
    match expr {
        Expr::VectorSelector(vs) => names.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => names.extend(ms.vs.name.clone()),
        Expr::Aggregate(a) => selected(&a.expr, names),
        Expr::Unary(u) => selected(&u.expr, names),
        Expr::Binary(b) => {
            selected(&b.lhs, names);
            selected(&b.rhs, names);
        }
        Expr::Paren(p) => selected(&p.expr, names),
        Expr::Subquery(s) => selected(&s.expr, names),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, names)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The metrics `expr` reads that neither the operator nor Prometheus exports.
fn unknown_metrics(expr: &Expr, exported: &[String]) -> Vec<String> {
    let mut names = BTreeSet::new();
    selected(expr, &mut names);
    let known = |name: &str| SCRAPE_METRICS.contains(&name) || exported.iter().any(|n| n == name);
    names
        .into_iter()
        .filter(|name| {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix));
            !known(name) && !family.is_some_and(known)
        })
        .collect()
}

/// Every metric family the operator and the gateway export.
fn exported() -> Vec<String> {
    let operator = spark_connect_operator::metrics::Metrics::new().expect("metrics");
    let gateway = spark_connect_operator::gateway::metrics::GatewayMetrics::new().expect("metrics");
    let mut names = operator.names().to_vec();
    names.extend_from_slice(gateway.names());
    names
}

#[test]
fn every_alert_parses_and_reads_only_metrics_that_exist() {
    let exported = exported();
    let rules = rules();
    assert!(rules.len() >= 5, "{} rules", rules.len());
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("expr");
        let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{alert}: {e}: {expr}"));
        let mut names = BTreeSet::new();
        selected(&parsed, &mut names);
        assert!(!names.is_empty(), "{alert} reads no metric");
        let unknown = unknown_metrics(&parsed, &exported);
        assert!(
            unknown.is_empty(),
            "{alert} reads {unknown:?}, which no one exports"
        );
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{alert} has a severity"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{alert} has a summary"
        );
    }
}

/// The metrics `query` reads that no one exports.
fn unknown(query: &str) -> Vec<String> {
    unknown_metrics(&parser::parse(query).expect("parses"), &exported())
}

#[test]
fn a_misspelt_metric_is_unknown_and_a_histograms_series_are_known() {
    assert_eq!(
        unknown("sum(rate(spark_connect_operator_claim_wait_secs_count[1h])) > 0"),
        ["spark_connect_operator_claim_wait_secs_count"]
    );
    assert_eq!(
        unknown("rate(spark_connect_operator_claim_wait_seconds_count[5m]) / up"),
        Vec::<String>::new()
    );
}

#[test]
fn the_gateways_metrics_are_known_by_their_scraped_names() {
    assert_eq!(
        unknown("rate(spark_connect_gateway_connections_closed_total[5m]) > 0"),
        Vec::<String>::new()
    );
    assert_eq!(
        unknown("rate(spark_connect_gateway_connection_closed_total[5m]) > 0"),
        ["spark_connect_gateway_connection_closed_total"]
    );
}
