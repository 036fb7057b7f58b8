//! Prometheus metrics of the gateway.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Registry, TextEncoder,
};

use crate::metrics::Registrar;

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    names: Vec<String>,
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
        let r = Registrar::new("spark_connect_gateway")?;
        Ok(Self {
            calls: r.counters(
                "calls_total",
                "Calls by RPC, outcome and cluster",
                &["rpc", "outcome", "cluster"],
            )?,
            call_seconds: r.add(HistogramVec::new(
                HistogramOpts::new("call_seconds", "Call duration").buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0,
                ]),
                &["rpc"],
            )?)?,
            bytes: r.counters("bytes_total", "Bytes proxied by direction", &["direction"])?,
            active_streams: r.add(IntGauge::new("active_streams", "Calls in flight")?)?,
            auth_failures: r.counters(
                "auth_failures_total",
                "Authentication failures by reason",
                &["reason"],
            )?,
            quota_refusals: r.counters(
                "quota_refusals_total",
                "Calls refused by a quota",
                &["quota"],
            )?,
            dedicated_claims: r.counters(
                "dedicated_claims_total",
                "Dedicated claims created and released",
                &["event"],
            )?,
            connections_closed: r.counters(
                "connections_closed_total",
                "Client connections the gateway closed, by reason",
                &["reason"],
            )?,
            names: r.names.take(),
            registry: r.registry,
        })
    }

    /// The name of every metric family exported, as a scrape shows it (alerts are checked
    /// against these).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
