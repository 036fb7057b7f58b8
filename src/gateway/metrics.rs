//! Prometheus metrics of the gateway.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// What every gateway metric's name begins with.
const PREFIX: &str = "spark_connect_gateway";

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Calls by RPC, outcome and cluster.
    pub calls: IntCounterVec,
    /// Call duration by RPC (to the end of the response stream).
    pub call_seconds: HistogramVec,
    /// Bytes proxied, by direction (in: from clients, out: to clients).
    pub bytes: IntCounterVec,
    /// Calls in flight.
    pub active_streams: IntGauge,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// Calls refused by a quota, by quota.
    pub quota_refusals: IntCounterVec,
    /// Dedicated claims by event (created, idle, ended).
    pub dedicated_claims: IntCounterVec,
    /// Client connections the gateway closed, by reason.
    pub connections_closed: IntCounterVec,
}

impl GatewayMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
        let calls = IntCounterVec::new(
            Opts::new("calls_total", "Calls by RPC, outcome and cluster"),
            &["rpc", "outcome", "cluster"],
        )?;
        let call_seconds = HistogramVec::new(
            HistogramOpts::new("call_seconds", "Call duration").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ]),
            &["rpc"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("bytes_total", "Bytes proxied by direction"),
            &["direction"],
        )?;
        let active_streams = IntGauge::new("active_streams", "Calls in flight")?;
        let auth_failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "Authentication failures by reason"),
            &["reason"],
        )?;
        let quota_refusals = IntCounterVec::new(
            Opts::new("quota_refusals_total", "Calls refused by a quota"),
            &["quota"],
        )?;
        let dedicated_claims = IntCounterVec::new(
            Opts::new(
                "dedicated_claims_total",
                "Dedicated claims created and released",
            ),
            &["event"],
        )?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "connections_closed_total",
                "Client connections the gateway closed, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(call_seconds.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(active_streams.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(quota_refusals.clone()))?;
        registry.register(Box::new(dedicated_claims.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        Ok(Self {
            registry,
            calls,
            call_seconds,
            bytes,
            active_streams,
            auth_failures,
            quota_refusals,
            dedicated_claims,
            connections_closed,
        })
    }

    /// The name of every metric family exported, as a scrape shows it (alerts are checked
    /// against these).
    pub fn names(&self) -> Vec<String> {
        let collectors: [&dyn Collector; 8] = [
            &self.calls,
            &self.call_seconds,
            &self.bytes,
            &self.active_streams,
            &self.auth_failures,
            &self.quota_refusals,
            &self.dedicated_claims,
            &self.connections_closed,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| format!("{PREFIX}_{}", d.fq_name))
            .collect()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
