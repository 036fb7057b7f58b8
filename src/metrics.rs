//! Prometheus metrics of the operator.

use std::cell::RefCell;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// What every metric's name starts with.
const PREFIX: &str = "spark_connect_operator";
/// Buckets of reconcile durations (seconds).
const RECONCILE_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Buckets of probe latencies (seconds): a Config call answers in about a millisecond.
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 2.5,
];
/// Buckets of claim waits (seconds): from a bind at once to a cold start.
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of warm-up durations (seconds).
const WARMUP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every metric the operator exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Every metric family's exported name.
    names: Vec<String>,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Servers by cluster and state; a state with none has no series (see
    /// [`Metrics::set_servers`]).
    pub servers: IntGaugeVec,
    /// Write requests (anything but GET/HEAD) sent to the apiserver, by verb.
    pub api_writes: IntCounterVec,
    /// Every request sent to the apiserver (reads, watches and writes), by verb.
    pub api_requests: IntCounterVec,
    /// Latency of passed probes.
    pub probe_latency: Histogram,
    /// Probe results by outcome.
    pub probe_results: IntCounterVec,
    /// Claims by outcome (bound, lost, expired, failed).
    pub claims: IntCounterVec,
    /// Time from the operator first seeing a claim to binding it, by cluster: a pool's hit
    /// rate is the share of its claims in the bucket of the wait its users accept.
    pub claim_wait: HistogramVec,
    /// Claims waiting for a server, by cluster.
    pub claims_waiting: IntGaugeVec,
    /// The autoscaler's idle target by cluster.
    pub autoscaler_target: IntGaugeVec,
    /// Servers the prober probes, by cluster.
    pub probe_targets: IntGaugeVec,
    /// Duration of passed server warm-ups.
    pub warmup_seconds: Histogram,
    /// Warm-ups by outcome (ok, failed, unauthenticated).
    pub warmups: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registrar::new(PREFIX)?;
        Ok(Self {
            reconciles: r.counters("reconciles_total", "Reconciles run", &["controller"])?,
            reconcile_errors: r.counters(
                "reconcile_errors_total",
                "Reconciles that failed",
                &["controller", "error"],
            )?,
            reconcile_duration: r.add(HistogramVec::new(
                HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration")
                    .buckets(RECONCILE_BUCKETS.to_vec()),
                &["controller"],
            )?)?,
            servers: r.gauges(
                "servers",
                "Servers by cluster and state",
                &["namespace", "cluster", "state"],
            )?,
            api_writes: r.counters(
                "api_write_requests_total",
                "Write requests sent to the apiserver",
                &["verb"],
            )?,
            api_requests: r.counters(
                "api_requests_total",
                "Requests sent to the apiserver (GET includes lists; WATCH is counted apart)",
                &["verb"],
            )?,
            probe_latency: r.histogram(
                "probe_latency_seconds",
                "Latency of passed Spark Connect Config probes",
                PROBE_BUCKETS,
            )?,
            probe_results: r.counters(
                "probe_results_total",
                "Probe results by outcome",
                &["outcome"],
            )?,
            claims: r.counters("claims_total", "Claims by outcome", &["outcome"])?,
            claim_wait: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "claim_wait_seconds",
                    "Time from the operator first seeing a claim to binding it, by cluster",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
                &["namespace", "cluster"],
            )?)?,
            claims_waiting: r.gauges(
                "claims_waiting",
                "Claims waiting for a server, by cluster",
                &["namespace", "cluster"],
            )?,
            autoscaler_target: r.gauges(
                "autoscaler_idle_target",
                "Idle target chosen by the autoscaler",
                &["namespace", "cluster"],
            )?,
            probe_targets: r.gauges(
                "probe_targets",
                "Servers the prober probes, by cluster",
                &["namespace", "cluster"],
            )?,
            warmup_seconds: r.histogram(
                "warmup_seconds",
                "Duration of passed warm-ups of new servers (ExecutePlan queries)",
                WARMUP_BUCKETS,
            )?,
            warmups: r.counters(
                "warmups_total",
                "Warm-ups of new servers by outcome",
                &["outcome"],
            )?,
            names: r.names.take(),
            registry: r.registry,
        })
    }

    /// Sets a cluster's count of servers in `state`. A count of zero removes the series: a
    /// thousand pools kept at zero would otherwise export (and this process hold) five thousand
    /// zeros. Sums and `> 0` alerts read an absent series as none.
    pub fn set_servers(&self, namespace: &str, cluster: &str, state: &str, count: i32) {
        let labels = [namespace, cluster, state];
        if count == 0 {
            let _ = self.servers.remove_label_values(&labels);
        } else {
            self.servers
                .with_label_values(&labels)
                .set(i64::from(count));
        }
    }

    /// Removes every series of a deleted cluster; `states` are the server states' label values.
    pub fn forget_cluster<'a>(
        &self,
        namespace: &str,
        cluster: &str,
        states: impl IntoIterator<Item = &'a str>,
    ) {
        for state in states {
            let _ = self
                .servers
                .remove_label_values(&[namespace, cluster, state]);
        }
        let _ = self
            .autoscaler_target
            .remove_label_values(&[namespace, cluster]);
        let _ = self.claim_wait.remove_label_values(&[namespace, cluster]);
        let _ = self
            .claims_waiting
            .remove_label_values(&[namespace, cluster]);
        let _ = self
            .probe_targets
            .remove_label_values(&[namespace, cluster]);
    }

    /// The name of every metric family exported, as a scrape shows it (dashboards and alerts
    /// are checked against these).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Registers metrics, noting the name each is exported under (the operator's and the
/// gateway's).
pub(crate) struct Registrar {
    pub(crate) registry: Registry,
    pub(crate) names: RefCell<Vec<String>>,
    prefix: &'static str,
}

impl Registrar {
    /// A registry whose metric names begin with `prefix`.
    pub(crate) fn new(prefix: &'static str) -> Result<Self, prometheus::Error> {
        Ok(Self {
            registry: Registry::new_custom(Some(prefix.into()), None)?,
            names: RefCell::new(Vec::new()),
            prefix,
        })
    }

    /// Registers `metric` and hands it back.
    pub(crate) fn add<M: Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, prometheus::Error> {
        self.names.borrow_mut().extend(
            metric
                .desc()
                .iter()
                .map(|d| format!("{}_{}", self.prefix, d.fq_name)),
        );
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A registered counter family.
    pub(crate) fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A registered gauge family.
    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A registered histogram.
    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_clusters_series_are_all_removed_and_others_stay() {
        let metrics = Metrics::new().expect("metrics");
        let states = ["starting", "idle", "claimed"];
        for cluster in ["gone", "kept"] {
            for state in states {
                metrics
                    .servers
                    .with_label_values(&["ns", cluster, state])
                    .set(1);
            }
            metrics
                .autoscaler_target
                .with_label_values(&["ns", cluster])
                .set(2);
            metrics
                .probe_targets
                .with_label_values(&["ns", cluster])
                .set(3);
            metrics
                .claim_wait
                .with_label_values(&["ns", cluster])
                .observe(0.02);
        }
        metrics.forget_cluster("ns", "gone", states);
        let text = metrics.render();
        assert!(!text.contains("cluster=\"gone\""), "{text}");
        // 3 states, the target, the probe targets, and the wait's 13 buckets, +Inf, sum and count.
        assert_eq!(text.matches("cluster=\"kept\"").count(), 5 + 16, "{text}");
        assert!(text.contains("spark_connect_operator_claim_wait_seconds_bucket"));
    }

    #[test]
    fn a_state_with_no_servers_has_no_series_and_one_that_empties_loses_its_series() {
        let metrics = Metrics::new().expect("metrics");
        metrics.set_servers("ns", "pool", "idle", 2);
        metrics.set_servers("ns", "pool", "claimed", 0);
        let text = metrics.render();
        assert!(text.contains("state=\"idle\"} 2"), "{text}");
        assert!(!text.contains("state=\"claimed\""), "{text}");
        metrics.set_servers("ns", "pool", "idle", 0);
        assert!(!metrics.render().contains("cluster=\"pool\""));
    }

    #[test]
    fn every_family_a_scrape_shows_is_named() {
        let metrics = Metrics::new().expect("metrics");
        metrics.claims.with_label_values(&["bound"]).inc();
        metrics
            .claim_wait
            .with_label_values(&["ns", "pool"])
            .observe(0.1);
        metrics.probe_latency.observe(0.001);
        let text = metrics.render();
        let shown: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        assert!(
            shown.contains(&"spark_connect_operator_claims_total"),
            "{text}"
        );
        for name in shown {
            assert!(
                metrics.names().iter().any(|n| n == name),
                "{name} not in {:?}",
                metrics.names()
            );
        }
        assert_eq!(metrics.names().len(), 15);
    }
}
