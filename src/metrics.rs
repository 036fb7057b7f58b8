//! Prometheus metrics of the operator.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every metric the operator exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Servers by cluster and state.
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
    /// Time from claim creation to binding.
    pub claim_wait: Histogram,
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
        let registry = Registry::new_custom(Some("spark_connect_operator".into()), None)?;
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles run"),
            &["controller"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Reconciles that failed"),
            &["controller", "error"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration").buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )?;
        let servers = IntGaugeVec::new(
            Opts::new("servers", "Servers by cluster and state"),
            &["namespace", "cluster", "state"],
        )?;
        let api_writes = IntCounterVec::new(
            Opts::new(
                "api_write_requests_total",
                "Write requests sent to the apiserver",
            ),
            &["verb"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "Requests sent to the apiserver (GET includes lists; WATCH is counted apart)",
            ),
            &["verb"],
        )?;
        let probe_latency = Histogram::with_opts(
            HistogramOpts::new(
                "probe_latency_seconds",
                "Latency of passed Spark Connect Config probes",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let probe_results = IntCounterVec::new(
            Opts::new("probe_results_total", "Probe results by outcome"),
            &["outcome"],
        )?;
        let claims =
            IntCounterVec::new(Opts::new("claims_total", "Claims by outcome"), &["outcome"])?;
        let claim_wait = Histogram::with_opts(
            HistogramOpts::new("claim_wait_seconds", "Time from claim creation to binding")
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
        )?;
        let autoscaler_target = IntGaugeVec::new(
            Opts::new(
                "autoscaler_idle_target",
                "Idle target chosen by the autoscaler",
            ),
            &["namespace", "cluster"],
        )?;
        let probe_targets = IntGaugeVec::new(
            Opts::new("probe_targets", "Servers the prober probes, by cluster"),
            &["namespace", "cluster"],
        )?;
        let warmup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "warmup_seconds",
                "Duration of passed warm-ups of new servers (ExecutePlan queries)",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )?;
        let warmups = IntCounterVec::new(
            Opts::new("warmups_total", "Warm-ups of new servers by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(warmup_seconds.clone()))?;
        registry.register(Box::new(warmups.clone()))?;
        registry.register(Box::new(probe_targets.clone()))?;
        registry.register(Box::new(autoscaler_target.clone()))?;
        registry.register(Box::new(claims.clone()))?;
        registry.register(Box::new(claim_wait.clone()))?;
        registry.register(Box::new(probe_latency.clone()))?;
        registry.register(Box::new(probe_results.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(servers.clone()))?;
        registry.register(Box::new(api_writes.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            servers,
            api_writes,
            api_requests,
            probe_latency,
            probe_results,
            claims,
            claim_wait,
            autoscaler_target,
            probe_targets,
            warmup_seconds,
            warmups,
        })
    }

    /// Removes every series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        for state in ["starting", "idle", "shared", "claimed", "unhealthy"] {
            let _ = self
                .servers
                .remove_label_values(&[namespace, cluster, state]);
        }
        let _ = self
            .autoscaler_target
            .remove_label_values(&[namespace, cluster]);
        let _ = self
            .probe_targets
            .remove_label_values(&[namespace, cluster]);
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
