//! Probe fan-out: the operator's prober against N fake Connect servers on loopback, in a
//! separate process, for a fixed time. Prints and writes CPU time, RSS and probe latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::runtime::reflector::ObjectRef;
use spark_connect_operator::crd::SparkConnectCluster;
use spark_connect_operator::metrics::Metrics;
use spark_connect_operator::probe::fake::{FakeState, serve};
use spark_connect_operator::probe::health::{HealthBook, Verdict};
use spark_connect_operator::probe::prober::{ProbeSettings, ProbeTarget, Prober};
use tokio::io::AsyncBufReadExt;

use super::report;

const TOKEN: &str = "bench-token";

/// Servers per fleet process (each holds a listener and a connection per server, well inside
/// the per-process open-file limit).
const FLEET_SIZE: usize = 5000;
/// The port every fake server listens on, each at its own loopback address (like real
/// servers: one port, many addresses), so no ephemeral ports are used up by listeners.
const PORT: u16 = 15002;

/// The loopback address of fake server `index` (127.a.b.c, never 127.0.0.x).
pub fn address(index: usize) -> String {
    let a = 1 + index / (254 * 254);
    let b = 1 + (index / 254) % 254;
    let c = 1 + index % 254;
    format!("127.{a}.{b}.{c}:{PORT}")
}

/// The fleet: fake servers `first..first + count` at their loopback addresses; prints `READY`
/// once all listen, then runs until killed.
pub async fn fleet(first: usize, count: usize) -> anyhow::Result<()> {
    for index in first..first + count {
        let listener = tokio::net::TcpListener::bind(address(index)).await?;
        tokio::spawn(serve(
            listener,
            FakeState::new(Some(TOKEN.into())),
            std::future::pending(),
        ));
    }
    println!("READY {count}");
    std::future::pending::<()>().await;
    Ok(())
}

/// Starts fleets for `servers` fake servers and waits until they all listen.
async fn start_fleets(servers: usize) -> anyhow::Result<Vec<tokio::process::Child>> {
    let me = std::env::current_exe()?;
    let mut fleets = Vec::new();
    for first in (0..servers).step_by(FLEET_SIZE) {
        let count = FLEET_SIZE.min(servers - first);
        let mut fleet = tokio::process::Command::new(&me)
            .args([
                "fleet",
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = fleet.stdout.take().context("fleet stdout")?;
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .context("a fleet printed nothing")?;
        anyhow::ensure!(line == format!("READY {count}"), "a fleet said {line}");
        fleets.push(fleet);
    }
    Ok(fleets)
}

/// Runs the benchmark: `servers` targets, at most `max_connections` kept open.
pub async fn run(
    servers: usize,
    period: Duration,
    duration: Duration,
    max_connections: usize,
) -> anyhow::Result<()> {
    let mut fleets = start_fleets(servers).await?;
    let metrics = Metrics::new()?;
    let book = Arc::new(HealthBook::default());
    let (trigger, mut triggered) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move { while futures::StreamExt::next(&mut triggered).await.is_some() {} });
    let prober = Prober::new(book.clone(), metrics.clone(), trigger, 256, max_connections);
    let cluster: ObjectRef<SparkConnectCluster> = ObjectRef::new("bench").within("bench");
    let targets: Vec<ProbeTarget> = (0..servers)
        .map(|i| ProbeTarget {
            uid: format!("bench-server-{i}"),
            address: address(i),
            token: Some(TOKEN.into()),
            warmup: None,
        })
        .collect();
    let settings = ProbeSettings {
        period,
        timeout: Duration::from_secs(3),
        failure_threshold: 3,
    };
    let cpu_before = report::cpu_seconds();
    let started = Instant::now();
    prober.sync(&cluster, &targets, &settings);
    let _ = tokio::time::timeout(duration, prober.clone().run(std::future::pending())).await;
    let cpu = report::cpu_seconds() - cpu_before;
    let healthy = targets
        .iter()
        .filter(|t| book.get(&t.uid).verdict == Verdict::Healthy)
        .count();
    let ok = metrics.probe_results.with_label_values(&["ok"]).get();
    let total: u64 = [
        "ok",
        "unauthenticated",
        "unavailable",
        "deadline_exceeded",
        "internal",
        "other",
    ]
    .iter()
    .map(|o| metrics.probe_results.with_label_values(&[o]).get())
    .sum();
    let value = serde_json::json!({
        "servers": servers,
        "max_connections_kept_open": max_connections,
        "connections_open_at_end": prober.open_connections(),
        "period_s": period.as_secs_f64(),
        "duration_s": started.elapsed().as_secs_f64(),
        "probes": total,
        "probes_ok": ok,
        "servers_healthy_at_end": healthy,
        "cpu_seconds": (cpu * 1000.0).round() / 1000.0,
        "rss_mb": (report::peak_rss_mb() * 10.0).round() / 10.0,
        "p50_ms": (report::histogram_percentile(&metrics.probe_latency, 0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (report::histogram_percentile(&metrics.probe_latency, 0.99) * 1000.0).round() / 1000.0,
        "latency_source": "the operator's probe_latency_seconds histogram, interpolated within buckets",
    });
    report::write(&format!("probe-{servers}"), &value)?;
    for fleet in &mut fleets {
        let _ = fleet.kill().await;
    }
    anyhow::ensure!(
        ok > 0 && healthy == servers,
        "not every fake server was probed healthy ({healthy}/{servers})"
    );
    Ok(())
}
