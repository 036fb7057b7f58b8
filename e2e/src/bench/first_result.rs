//! Claim to first result with real Spark: a Python process with pyspark already imported waits
//! inside the world; the clock starts when the claim is created. For a warm pool (servers
//! warmed up by the operator), the same at its server cap (no replacement starting beside the
//! claimant) and a cold start (a claim on an empty pool, no warm-up), in the same run, each
//! over several rounds: claim to Bound, then connect, first query and second query measured
//! apart by the client.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::report::Spread;

/// The client: imports pyspark once, then for each endpoint line connects, runs a query with a
/// shuffle and a small SQL query, and answers with their timings as one JSON line.
const CLIENT: &str = r#"
import json, sys, time
from pyspark.sql import SparkSession, functions as F
print("ready", flush=True)
for line in sys.stdin:
    endpoint = line.strip()
    try:
        t0 = time.perf_counter()
        s = SparkSession.builder.remote(endpoint).create()
        t1 = time.perf_counter()
        groups = s.range(0, 100000, 1, 4).groupBy((F.col("id") % 7).alias("k")).count().orderBy("k").collect()
        t2 = time.perf_counter()
        n = s.sql("SELECT count(*) AS n FROM range(1000)").collect()[0][0]
        t3 = time.perf_counter()
        s.stop()
        print(json.dumps({"connect_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3,
                          "second_ms": (t3 - t2) * 1e3, "groups": len(groups), "n": n}), flush=True)
    except Exception as e:
        print(json.dumps({"error": str(e)[:400]}), flush=True)
"#;

/// What the client measured for one endpoint.
#[derive(Debug, Deserialize)]
pub(super) struct ClientTimings {
    #[serde(default)]
    pub(super) connect_ms: f64,
    #[serde(default)]
    pub(super) first_ms: f64,
    #[serde(default)]
    second_ms: f64,
    #[serde(default)]
    groups: usize,
    #[serde(default)]
    n: i64,
    error: Option<String>,
}

/// One round: claim to Bound as seen by the bench, then the client's figures.
struct Round {
    to_bound: Duration,
    client: ClientTimings,
}

impl Round {
    /// Claim creation to the first query's result.
    fn to_first_result(&self) -> Duration {
        self.to_bound
            + Duration::from_secs_f64((self.client.connect_ms + self.client.first_ms) / 1e3)
    }

    /// Bound to the first query's result.
    fn after_bound(&self) -> Duration {
        Duration::from_secs_f64((self.client.connect_ms + self.client.first_ms) / 1e3)
    }
}

/// The Python client waiting inside the world.
pub(super) struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    /// Starts the client inside the world; `ca` is a CA file it trusts for TLS endpoints.
    pub(super) async fn start(world: &Path, ca: Option<&Path>) -> anyhow::Result<Self> {
        let python = std::env::var("SCO_PYTHON").context("SCO_PYTHON")?;
        let trust = ca
            .map(|ca| format!("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={}", ca.display()))
            .unwrap_or_else(|| "SCO_NO_EXTRA_CA=1".into());
        let mut child =
            tokio::process::Command::new(std::env::current_exe()?.with_file_name("sco-world"))
                .arg("--state")
                .arg(world)
                .args(["exec", "--", "env", &trust, &python, "-u", "-c", CLIENT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut client = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let first = client.line(Duration::from_secs(120)).await?;
        if first != "ready" {
            bail!("the Python client did not start: {first}");
        }
        Ok(client)
    }

    async fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("the Python client did not answer in time")??
            .context("the Python client exited")
    }

    /// Connects to `endpoint`, runs the two queries and checks their results.
    pub(super) async fn query(&mut self, endpoint: &str) -> anyhow::Result<ClientTimings> {
        self.stdin
            .write_all(format!("{endpoint}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let timings: ClientTimings =
            serde_json::from_str(&self.line(Duration::from_secs(300)).await?)?;
        if let Some(e) = &timings.error {
            bail!("the query failed: {e}");
        }
        if timings.groups != 7 || timings.n != 1000 {
            bail!("wrong results: {timings:?}");
        }
        Ok(timings)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A pool of `idle` real Spark servers; `max_servers` caps how many may run at once (a pool
/// at its cap starts no replacement while the claimant's first queries run).
fn spec(idle: i32, max_servers: i32, warmup: bool) -> serde_json::Value {
    serde_json::json!({
        "image": "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
        "shared": 0,
        "hotPool": {"idle": idle, "max": idle.max(1), "maxServers": max_servers},
        "sparkConf": {"spark.sql.shuffle.partitions": "4"},
        "executors": {"instances": 1},
        "probe": {"period": "2s", "timeout": "1s"},
        "warmup": {"enabled": warmup}
    })
}

fn phase(c: &SparkConnectClaim) -> ClaimPhase {
    c.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Runs `rounds` warm and `rounds` cold measurements in namespace `ns`.
pub async fn run(
    client: &kube::Client,
    world: &Path,
    ns: &str,
    rounds: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
    let claims: Api<SparkConnectClaim> = Api::namespaced(client.clone(), ns);
    let mut python = Client::start(world, None).await?;
    let mut rows = Vec::new();
    // The warm pool refills the moment a server is claimed, so on a small machine the
    // replacement's JVM start shares the cores with the claimant's first query; a pool at its
    // server cap shows the same claim without that neighbour.
    for (scenario, idle, max_servers, warmup) in [
        ("warm_pool", 2, 10, true),
        ("warm_pool_at_server_cap", 1, 1, true),
        ("cold_start", 0, 10, false),
    ] {
        let name = format!("spark-{}", scenario.replace('_', "-"));
        let cluster: SparkConnectCluster = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "spec": spec(idle, max_servers, warmup)}),
        )?;
        clusters.create(&PostParams::default(), &cluster).await?;
        let mut measured = Vec::new();
        for round in 0..rounds {
            wait_for_full_pool(&clusters, &name, idle).await?;
            measured.push(one_round(&claims, &mut python, &name, round).await?);
        }
        clusters.delete(&name, &DeleteParams::default()).await?;
        rows.push(summarize(scenario, &measured));
    }
    Ok(rows)
}

/// Waits until the pool holds `idle` idle servers and starts none (nothing competes with the
/// measured round for the cores).
async fn wait_for_full_pool(
    clusters: &Api<SparkConnectCluster>,
    name: &str,
    idle: i32,
) -> anyhow::Result<()> {
    sco_e2e::cluster_status_until(
        clusters,
        name,
        "a full, quiet pool",
        Duration::from_secs(900),
        |s| s.servers.idle >= idle && s.servers.starting == 0 && s.servers.claimed == 0,
    )
    .await?;
    Ok(())
}

async fn one_round(
    claims: &Api<SparkConnectClaim>,
    python: &mut Client,
    cluster: &str,
    round: usize,
) -> anyhow::Result<Round> {
    let name = format!("{cluster}-{round}");
    let claim: SparkConnectClaim = serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "spec": {"cluster": cluster, "user": "bench"}}),
    )?;
    let started = Instant::now();
    claims.create(&PostParams::default(), &claim).await?;
    let found = std::sync::Mutex::new(None);
    sco_e2e::poll::until(
        "Bound",
        Duration::from_secs(600),
        Duration::from_millis(5),
        || async {
            let bound = claims
                .get(&name)
                .await
                .ok()
                .filter(|c| phase(c) == ClaimPhase::Bound);
            let endpoint = bound.and_then(|c| c.status).and_then(|s| s.endpoint);
            let seen = endpoint.is_some();
            if let Ok(mut found) = found.lock() {
                *found = endpoint;
            }
            seen
        },
    )
    .await?;
    let to_bound = started.elapsed();
    let endpoint = found.into_inner().ok().flatten().context("no endpoint")?;
    let client = python.query(&endpoint).await?;
    claims.delete(&name, &DeleteParams::default()).await?;
    let measured = Round { to_bound, client };
    println!(
        "  {cluster} round {round}: Bound {:.0} ms, connect {:.0} ms, first query {:.0} ms, second {:.0} ms",
        measured.to_bound.as_secs_f64() * 1e3,
        measured.client.connect_ms,
        measured.client.first_ms,
        measured.client.second_ms,
    );
    Ok(measured)
}

fn summarize(scenario: &str, rounds: &[Round]) -> serde_json::Value {
    let of = |f: &dyn Fn(&Round) -> f64| Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
    let to_first = of(&|r| r.to_first_result().as_secs_f64() * 1e3);
    let after_bound = of(&|r| r.after_bound().as_secs_f64() * 1e3);
    let to_bound = of(&|r| r.to_bound.as_secs_f64() * 1e3);
    let connect = of(&|r| r.client.connect_ms);
    let first = of(&|r| r.client.first_ms);
    let second = of(&|r| r.client.second_ms);
    println!(
        "claim to first result, real Spark, {scenario}, {} rounds: median {:.0} ms ({:.0}..{:.0}); Bound {:.0} ms, then connect {:.0} ms, first query {:.0} ms (first result {:.0} ms after Bound), second query {:.0} ms",
        rounds.len(),
        to_first.median,
        to_first.min,
        to_first.max,
        to_bound.median,
        connect.median,
        first.median,
        after_bound.median,
        second.median
    );
    serde_json::json!({
        "scenario": format!("claim_to_first_result_real_spark_{scenario}"),
        "rounds": rounds.len(),
        "claim_to_first_result_ms": to_first,
        "claim_to_bound_ms": to_bound,
        "bound_to_first_result_ms": after_bound,
        "connect_ms": connect,
        "first_query_ms": first,
        "second_query_ms": second,
    })
}

/// The speed-up of each warm scenario over the cold start (claim to first result, medians),
/// from the rows of [`run`].
pub fn speedups(rows: &[serde_json::Value]) -> Vec<(&'static str, f64)> {
    let median = |scenario: &str| {
        rows.iter()
            .find(|r| r["scenario"] == format!("claim_to_first_result_real_spark_{scenario}"))
            .and_then(|r| r["claim_to_first_result_ms"]["median"].as_f64())
    };
    let Some(cold) = median("cold_start") else {
        return Vec::new();
    };
    ["warm_pool", "warm_pool_at_server_cap"]
        .into_iter()
        .filter_map(|warm| Some((warm, cold / median(warm)?)))
        .collect()
}
