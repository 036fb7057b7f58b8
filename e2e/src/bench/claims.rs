//! Claim latency against the real apiserver and operator in the local world: claim-to-Bound
//! for 1, 10 and 100 concurrent claims on a warm pool of fake servers, and claim-to-first-query
//! with real Spark for a warm pool and for a cold start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};

use super::report;

const NS: &str = "bench-claims";

fn phase(c: &SparkConnectClaim) -> ClaimPhase {
    c.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

async fn wait<F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    sco_e2e::poll::until(what, timeout, Duration::from_millis(100), check).await?;
    Ok(())
}

struct Bench {
    client: Client,
    clusters: Api<SparkConnectCluster>,
    claims: Api<SparkConnectClaim>,
    /// First time each claim was seen Bound.
    bound_at: Arc<Mutex<HashMap<String, Instant>>>,
    world: PathBuf,
}

impl Bench {
    async fn pool(&self, name: &str, spec: serde_json::Value, idle: i32) -> anyhow::Result<()> {
        let cluster: SparkConnectCluster =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))?;
        if self.clusters.get_opt(name).await?.is_none() {
            self.clusters
                .create(&PostParams::default(), &cluster)
                .await?;
        }
        wait(
            &format!("{idle} idle servers in {name}"),
            Duration::from_secs(600),
            || async {
                self.clusters
                    .get(name)
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .is_some_and(|s| s.servers.idle >= idle && s.servers.claimed == 0)
            },
        )
        .await
    }

    /// Creates `n` claims at once on `cluster`; returns each claim's create-to-Bound time.
    async fn burst(&self, cluster: &str, n: usize, round: usize) -> anyhow::Result<Vec<Duration>> {
        let creates = (0..n).map(|i| {
            let claims = self.claims.clone();
            let name = format!("{cluster}-r{round}-{i:03}");
            async move {
                let claim: SparkConnectClaim = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name}, "spec": {"cluster": cluster, "user": "bench"}
                }))?;
                let started = Instant::now();
                claims.create(&PostParams::default(), &claim).await?;
                anyhow::Ok((name, started))
            }
        });
        let started: Vec<(String, Instant)> = futures::future::try_join_all(creates).await?;
        let names: Vec<&String> = started.iter().map(|(n, _)| n).collect();
        wait("every claim Bound", Duration::from_secs(300), || async {
            self.bound_at
                .lock()
                .map(|b| names.iter().all(|n| b.contains_key(*n)))
                .unwrap_or(false)
        })
        .await?;
        let bound = self
            .bound_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(started
            .iter()
            .map(|(name, t)| bound[name].duration_since(*t))
            .collect())
    }

    async fn release_all(&self, cluster: &str, idle: i32) -> anyhow::Result<()> {
        self.claims
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        wait("claims deleted", Duration::from_secs(120), || async {
            self.claims
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
        })
        .await?;
        wait("the pool refilled", Duration::from_secs(600), || async {
            self.clusters
                .get(cluster)
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.servers.claimed == 0 && s.servers.idle >= idle)
        })
        .await
    }

    /// Claim, wait for Bound, run a query through the claim's endpoint inside the world.
    async fn claim_to_first_query(&self, cluster: &str) -> anyhow::Result<Duration> {
        let name = format!("{cluster}-query");
        let claim: SparkConnectClaim = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "spec": {"cluster": cluster}}),
        )?;
        let started = Instant::now();
        self.claims.create(&PostParams::default(), &claim).await?;
        wait("Bound", Duration::from_secs(600), || async {
            self.claims
                .get(&name)
                .await
                .ok()
                .is_some_and(|c| phase(&c) == ClaimPhase::Bound)
        })
        .await?;
        let endpoint = self
            .claims
            .get(&name)
            .await?
            .status
            .and_then(|s| s.endpoint)
            .context("no endpoint")?;
        let python = std::env::var("SCO_PYTHON").context("SCO_PYTHON")?;
        let script = format!(
            "from pyspark.sql import SparkSession\ns = SparkSession.builder.remote('{endpoint}').getOrCreate()\nprint(s.range(10).count())\n"
        );
        let out =
            tokio::process::Command::new(std::env::current_exe()?.with_file_name("sco-world"))
                .arg("--state")
                .arg(&self.world)
                .args(["exec", "--", &python, "-c", &script])
                .output()
                .await?;
        if String::from_utf8_lossy(&out.stdout).trim() != "10" {
            bail!("query failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(started.elapsed())
    }
}

/// The apiserver's own write latency and throughput here: `n` parallel patches of ConfigMaps
/// on warm connections (one unmeasured round first), so claim figures read as a ratio to it.
async fn write_floor(
    client: &Client,
    n: usize,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..n).map(|i| format!("floor-{i:03}")).collect();
    for name in &names {
        if maps.get_opt(name).await?.is_none() {
            let map: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
            maps.create(&PostParams::default(), &map).await?;
        }
    }
    let mut per_round = Vec::new();
    let mut all = Vec::new();
    for round in 0..=rounds {
        let started = Instant::now();
        let patches = names.iter().map(|name| {
            let maps = maps.clone();
            async move {
                let patch = serde_json::json!({"metadata": {"annotations": {"bench/round": round.to_string()}}});
                let t = Instant::now();
                maps.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                    .await?;
                anyhow::Ok(t.elapsed())
            }
        });
        let samples = futures::future::try_join_all(patches).await?;
        let wall = started.elapsed();
        if round == 0 {
            continue; // warms the connections
        }
        per_round.push((samples.clone(), wall));
        all.extend(samples);
    }
    maps.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let rates: Vec<f64> = per_round
        .iter()
        .map(|(_, wall)| n as f64 / wall.as_secs_f64())
        .collect();
    let (p50s, p99s) = spread(&per_round.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    println!(
        "write floor: {n} parallel patches, p50 {:.1} ms, p99 {:.1} ms, {:.0} writes/s (median of {rounds} rounds)",
        p50s.median,
        p99s.median,
        median(&rates)
    );
    Ok(serde_json::json!({
        "scenario": "apiserver_write_floor", "concurrency": n, "rounds": rounds, "samples": all.len(),
        "p50_ms": p50s.median, "p99_ms": p99s.median,
        "p50_ms_spread": [p50s.min, p50s.max], "p99_ms_spread": [p99s.min, p99s.max],
        "writes_per_second": median(&rates),
        "p50_ms_all": report::percentile(&all, 0.5), "p99_ms_all": report::percentile(&all, 0.99),
    }))
}

/// Median, least and most of a figure across rounds.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// p50 and p99 of each round, summarized across rounds.
fn spread(rounds: &[Vec<Duration>]) -> (Spread, Spread) {
    let of = |p: f64| {
        let values: Vec<f64> = rounds.iter().map(|r| report::percentile(r, p)).collect();
        Spread {
            median: median(&values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    };
    (of(0.5), of(0.99))
}

fn fake_spec(idle: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "sco-fake-connect:latest",
        "shared": 0,
        "hotPool": {"idle": idle, "max": idle.max(1) * 2, "maxWaitingClaims": 1000},
        "probe": {"period": "2s", "timeout": "1s"},
        "server": {"podTemplate": {"spec": {"containers": [{
            "name": "spark-connect-server", "command": ["/sco-fake-connect"], "args": ["--listen", "0.0.0.0:15002"]
        }]}}}
    })
}

fn spark_spec(idle: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
        "shared": 0,
        "hotPool": {"idle": idle, "max": 2},
        // A warm server has its executor running already; a cold start waits for both JVMs.
        "executors": {"instances": 1},
        "probe": {"period": "2s", "timeout": "1s"}
    })
}

/// Runs the benchmark against the world at `world`.
pub async fn run(world: PathBuf, spark: bool, only_spark: bool) -> anyhow::Result<()> {
    let client = sco_e2e::world_client(&world).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NS).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?,
            )
            .await?;
    }
    let bench = Bench {
        clusters: Api::namespaced(client.clone(), NS),
        claims: Api::namespaced(client.clone(), NS),
        client,
        bound_at: Arc::default(),
        world,
    };
    let seen = bench.bound_at.clone();
    let watch = watcher(bench.claims.clone(), watcher::Config::default()).applied_objects();
    tokio::spawn(async move {
        let mut watch = std::pin::pin!(watch);
        while let Some(Ok(claim)) = watch.next().await {
            if phase(&claim) == ClaimPhase::Bound
                && let Ok(mut seen) = seen.lock()
            {
                seen.entry(claim.name_any()).or_insert_with(Instant::now);
            }
        }
    });

    let mut rows = Vec::new();
    if !only_spark {
        rows.push(write_floor(&bench.client, 300, 10).await?);
    }
    let fake_scenarios: &[(usize, usize)] = if only_spark {
        &[]
    } else {
        &[(1, 20), (10, 10), (100, 10)]
    };
    for &(concurrency, rounds) in fake_scenarios {
        let cluster = format!("fake-{concurrency}");
        bench
            .pool(&cluster, fake_spec(concurrency as i32), concurrency as i32)
            .await?;
        let mut samples = Vec::new();
        let mut per_round = Vec::new();
        for round in 0..rounds {
            let burst = bench.burst(&cluster, concurrency, round).await?;
            samples.extend(burst.iter().copied());
            per_round.push(burst);
            bench.release_all(&cluster, concurrency as i32).await?;
        }
        let (p50s, p99s) = spread(&per_round);
        bench
            .clusters
            .delete(&cluster, &DeleteParams::default())
            .await?;
        println!(
            "claim-to-Bound, warm pool, {concurrency} concurrent, {rounds} rounds: p50 {:.1} ms ({:.1}..{:.1}), p99 {:.1} ms ({:.1}..{:.1})",
            p50s.median, p50s.min, p50s.max, p99s.median, p99s.min, p99s.max
        );
        rows.push(serde_json::json!({
            "scenario": "claim_to_bound_warm_pool", "concurrency": concurrency, "rounds": rounds,
            "samples": samples.len(),
            "p50_ms": p50s.median, "p99_ms": p99s.median,
            "p50_ms_spread": [p50s.min, p50s.max], "p99_ms_spread": [p99s.min, p99s.max],
            "p50_ms_all": report::percentile(&samples, 0.5), "p99_ms_all": report::percentile(&samples, 0.99),
        }));
    }
    if spark {
        bench.pool("spark-warm", spark_spec(1), 1).await?;
        let warm = bench.claim_to_first_query("spark-warm").await?;
        bench
            .clusters
            .delete("spark-warm", &DeleteParams::default())
            .await?;
        bench.pool("spark-cold", spark_spec(0), 0).await?;
        let cold = bench.claim_to_first_query("spark-cold").await?;
        bench
            .clusters
            .delete("spark-cold", &DeleteParams::default())
            .await?;
        for (scenario, d) in [
            ("claim_to_first_query_warm_pool_real_spark", warm),
            ("claim_to_first_query_cold_start_real_spark", cold),
        ] {
            println!("{scenario}: {:.0} ms", d.as_secs_f64() * 1000.0);
            rows.push(serde_json::json!({
                "scenario": scenario, "concurrency": 1, "samples": 1,
                "p50_ms": d.as_secs_f64() * 1000.0, "p99_ms": d.as_secs_f64() * 1000.0,
            }));
        }
    }
    let _ = bench.client;
    report::write("claims", &serde_json::Value::Array(rows))
}
