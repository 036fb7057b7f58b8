//! The Config probe against a real Spark Connect server (pip pyspark + Java 17) on loopback.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spark_connect_operator::probe::client::{ConnectProbe, FailureKind, session_id};
use spark_connect_operator::probe::health::{ServerHealth, Verdict};
use support::wait_until;

struct SparkServer(Child);

impl Drop for SparkServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spark_home() -> std::path::PathBuf {
    let python = std::path::PathBuf::from(
        std::env::var("SCO_PYTHON").expect("SCO_PYTHON (set by e2e/run-e2e.sh)"),
    );
    let lib = python
        .parent()
        .and_then(|b| b.parent())
        .expect("venv")
        .join("lib");
    std::fs::read_dir(&lib)
        .expect("venv lib")
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/pyspark"))
        .find(|p| p.join("jars").is_dir())
        .expect("pyspark with jars")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_spark(port: u16, token: &str) -> SparkServer {
    let home = spark_home();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("sco-probe-spark-{port}.log")))
            .unwrap();
    let child = Command::new(home.join("bin/spark-submit"))
        .env("SPARK_HOME", &home)
        .env("SPARK_CONNECT_AUTHENTICATE_TOKEN", token)
        .args([
            "--master",
            "local[1]",
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
        ])
        .args(["--conf", "spark.connect.grpc.binding.address=127.0.0.1"])
        .args(["--conf", &format!("spark.connect.grpc.binding.port={port}")])
        .args([
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.driver.host=127.0.0.1",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spark-submit");
    SparkServer(child)
}

#[tokio::test]
async fn config_probe_against_a_real_spark_connect_server() {
    let port = free_port();
    let server = start_spark(port, "secret-token");
    let address = format!("127.0.0.1:{port}");
    let probe = |token: &str, timeout| {
        ConnectProbe::new(
            &address,
            Some(token.into()),
            session_id("probe-test-pod"),
            timeout,
        )
        .unwrap()
    };
    let good = probe("secret-token", Duration::from_secs(3));
    let started = Instant::now();
    wait_until(
        Duration::from_secs(180),
        "the Spark Connect server to answer",
        || async { good.check().await.is_ok() },
    )
    .await;
    println!(
        "real Spark Connect server answered the probe {:.1}s after start",
        started.elapsed().as_secs_f64()
    );

    // Passing probes reuse one server session.
    let first = good.check().await.unwrap();
    let second = good.check().await.unwrap();
    assert_eq!(
        first.server_side_session_id, second.server_side_session_id,
        "one session, not one per probe"
    );
    println!("probe latency on a warm session: {:?}", second.latency);
    let version = good.spark_version().await.unwrap();
    assert!(version.starts_with('4'), "{version}");
    println!("Spark version {version}");

    // A wrong token is an auth failure, not a dead server.
    let wrong = probe("wrong-token", Duration::from_secs(3))
        .check()
        .await
        .unwrap_err();
    assert_eq!(
        wrong.kind,
        FailureKind::Unauthenticated,
        "{}",
        wrong.message
    );

    // A stopped JVM is detected as hung within period x threshold + timeout.
    let (period, threshold, timeout) = (Duration::from_secs(1), 3, Duration::from_secs(1));
    let hung_probe = probe("secret-token", timeout);
    let mut health = ServerHealth::default();
    health.record(&hung_probe.check().await, threshold);
    assert_eq!(health.verdict, Verdict::Healthy);
    let pid = server.0.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let stopped = Instant::now();
    let mut kinds = Vec::new();
    while health.verdict == Verdict::Healthy && stopped.elapsed() < Duration::from_secs(30) {
        let next = Instant::now() + period;
        let result = hung_probe.check().await;
        if let Err(f) = &result {
            kinds.push(f.kind);
        }
        health.record(&result, threshold);
        tokio::time::sleep_until(next.into()).await;
    }
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    assert_eq!(health.verdict, Verdict::Unhealthy);
    assert!(
        kinds.iter().all(|k| *k == FailureKind::DeadlineExceeded),
        "{kinds:?}"
    );
    println!(
        "SIGSTOP detected as hung after {:.1}s (bound: period {period:?} x {threshold} + timeout {timeout:?})",
        stopped.elapsed().as_secs_f64()
    );
    good.release().await.unwrap();
}
