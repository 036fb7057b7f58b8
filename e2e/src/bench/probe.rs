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

/// The fleet: `count` fake servers on 127.0.0.1, ports printed on one line; runs until killed.
pub async fn fleet(count: usize) -> anyhow::Result<()> {
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port().to_string());
        tokio::spawn(serve(
            listener,
            FakeState::new(Some(TOKEN.into())),
            std::future::pending(),
        ));
    }
    println!("PORTS {}", ports.join(","));
    std::future::pending::<()>().await;
    Ok(())
}

/// Runs the benchmark.
pub async fn run(servers: usize, period: Duration, duration: Duration) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let mut fleet = tokio::process::Command::new(me)
        .args(["fleet", "--count", &servers.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(fleet.stdout.take().context("fleet stdout")?).lines();
    let line = lines
        .next_line()
        .await?
        .context("the fleet printed nothing")?;
    let ports: Vec<String> = line
        .trim_start_matches("PORTS ")
        .split(',')
        .map(String::from)
        .collect();
    anyhow::ensure!(
        ports.len() == servers,
        "the fleet started {} servers",
        ports.len()
    );

    let metrics = Metrics::new()?;
    let book = Arc::new(HealthBook::default());
    let (trigger, mut triggered) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move { while futures::StreamExt::next(&mut triggered).await.is_some() {} });
    let prober = Prober::new(book.clone(), metrics.clone(), trigger, 256);
    let cluster: ObjectRef<SparkConnectCluster> = ObjectRef::new("bench").within("bench");
    let targets: Vec<ProbeTarget> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| ProbeTarget {
            uid: format!("bench-server-{i}"),
            address: format!("127.0.0.1:{port}"),
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
    report::write("probe", &value)?;
    let _ = fleet.kill().await;
    anyhow::ensure!(
        ok > 0 && healthy == servers,
        "not every fake server was probed healthy ({healthy}/{servers})"
    );
    Ok(())
}
