//! Claim latency against the real apiserver and operator in the local world: the apiserver's
//! write floor, claim-to-Bound for 1, 10, 100 and 500 concurrent claims on a warm pool of fake
//! servers, and (see `first_result`) claim-to-first-result with real Spark.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use spark_connect_operator::crd::{
    ClaimPhase, SparkConnectClaim, SparkConnectClaimStatus, SparkConnectCluster,
};

use super::floor::{self, spread};
use super::report;
use super::{cpu, first_result};

/// The bench, and the first part of its namespace's name.
const BENCH: &str = "bench-claims";
/// Parallel writes in a round of either floor.
const FLOOR_WRITES: usize = 300;

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
    /// First time each claim was seen at all (how late a watch hears of a new claim).
    seen_at: Arc<Mutex<HashMap<String, Instant>>>,
    world: PathBuf,
    /// This run's namespace.
    namespace: String,
}

impl Bench {
    /// A fresh namespace, and a watch that notes when each claim is first seen Bound.
    async fn start(world: PathBuf) -> anyhow::Result<Self> {
        let client = sco_e2e::world_client(&world).await?;
        let namespace = sco_e2e::fresh_namespace(&client, BENCH).await?;
        let bench = Bench {
            clusters: Api::namespaced(client.clone(), &namespace),
            claims: Api::namespaced(client.clone(), &namespace),
            client,
            bound_at: Arc::default(),
            seen_at: Arc::default(),
            world,
            namespace,
        };
        let (bound, seen) = (bench.bound_at.clone(), bench.seen_at.clone());
        let watch = watcher(bench.claims.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut watch = std::pin::pin!(watch);
            while let Some(Ok(claim)) = watch.next().await {
                let now = Instant::now();
                if let Ok(mut seen) = seen.lock() {
                    seen.entry(claim.name_any()).or_insert(now);
                }
                if phase(&claim) == ClaimPhase::Bound
                    && let Ok(mut bound) = bound.lock()
                {
                    bound.entry(claim.name_any()).or_insert(now);
                }
            }
        });
        Ok(bench)
    }

    /// `rounds` bursts of `concurrency` claims on a pool of as many idle fake servers, each
    /// right after a round of the status floor on the same machine state (pool up, refilled).
    async fn warm_pool(
        &self,
        concurrency: usize,
        rounds: usize,
        floors: &[(String, f64)],
        status_floor: &floor::StatusFloor,
    ) -> anyhow::Result<serde_json::Value> {
        let cluster = format!("fake-{concurrency}");
        self.pool(&cluster, fake_spec(concurrency as i32), concurrency as i32)
            .await?;
        let mut added = Rounds::default();
        for round in 0..rounds {
            let paired_floor = status_floor.round().await?;
            let burst = self.burst(&cluster, concurrency, round).await?;
            let held = burst.held.clone();
            added.add(round, rounds, burst, &paired_floor);
            self.release_all(&cluster, concurrency as i32, &held)
                .await?;
        }
        self.clusters
            .delete(&cluster, &DeleteParams::default())
            .await?;
        Ok(added.row(concurrency, floors))
    }

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

    /// Creates `n` claims at once on `cluster` and waits until all are Bound.
    async fn burst(&self, cluster: &str, n: usize, round: usize) -> anyhow::Result<Burst> {
        let creates = (0..n).map(|i| {
            let claims = self.claims.clone();
            let name = format!("{cluster}-r{round}-{i:03}");
            async move {
                let claim: SparkConnectClaim = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name}, "spec": {"cluster": cluster, "user": "bench"}
                }))?;
                let started = Instant::now();
                claims.create(&PostParams::default(), &claim).await?;
                anyhow::Ok((name, started, started.elapsed()))
            }
        });
        let before = apiserver_requests(&self.client).await;
        let cpu_before = cpu::by_process();
        let started: Vec<(String, Instant, Duration)> =
            futures::future::try_join_all(creates).await?;
        let names: Vec<&String> = started.iter().map(|(n, ..)| n).collect();
        wait("every claim Bound", Duration::from_secs(300), || async {
            self.bound_at
                .lock()
                .map(|b| names.iter().all(|n| b.contains_key(*n)))
                .unwrap_or(false)
        })
        .await?;
        let cpu = cpu::spent(&cpu_before, &cpu::by_process());
        let after = apiserver_requests(&self.client).await;
        let during: BTreeMap<String, f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        let statuses: Vec<(String, SparkConnectClaimStatus)> = self
            .claims
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|c| Some((c.name_any(), c.status?)))
            .collect();
        let waited: HashMap<&str, Duration> = statuses
            .iter()
            .filter_map(|(name, s)| {
                let ms = u64::try_from(s.wait_millis?).ok()?;
                Some((name.as_str(), Duration::from_millis(ms)))
            })
            .collect();
        let held = statuses
            .iter()
            .filter_map(|(_, s)| s.server.clone())
            .collect();
        let bound = self
            .bound_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let seen = self
            .seen_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let phases = started
            .iter()
            .map(|(name, t, create)| Phases {
                total: bound[name].duration_since(*t),
                create: *create,
                watched: seen
                    .get(name)
                    .map_or(Duration::ZERO, |at| at.duration_since(*t)),
                in_operator: waited.get(name.as_str()).copied().unwrap_or_default(),
            })
            .collect();
        Ok(Burst {
            phases,
            requests: during,
            held,
            cpu,
        })
    }

    /// Deletes every claim and waits until the pool is back: the servers they `held` are gone
    /// (the cluster's status alone may still show the pool from before the burst) and the
    /// cluster reports `idle` idle servers and none claimed.
    async fn release_all(&self, cluster: &str, idle: i32, held: &[String]) -> anyhow::Result<()> {
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        wait(
            "the claimed servers gone",
            Duration::from_secs(300),
            || async {
                pods.list(&ListParams::default()).await.is_ok_and(|l| {
                    !l.items
                        .iter()
                        .any(|p| held.iter().any(|h| Some(h) == p.metadata.name.as_ref()))
                })
            },
        )
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
}

/// The apiserver's request counters (`apiserver_request_total`), summed by verb and resource.
async fn apiserver_requests(client: &Client) -> HashMap<String, f64> {
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return HashMap::new();
    };
    let Ok(text) = client.request_text(request).await else {
        return HashMap::new();
    };
    let mut counts = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
        };
        let key = format!(
            "{} {}/{}",
            label("verb"),
            label("resource"),
            label("subresource")
        );
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts.entry(key).or_default() += value;
    }
    counts
}

/// What one burst of claims came to.
struct Burst {
    /// Each claim's create-to-Bound time and where it went.
    phases: Vec<Phases>,
    /// The apiserver's requests meanwhile, by verb and resource.
    requests: BTreeMap<String, f64>,
    /// The servers the claims were bound to.
    held: Vec<String>,
    /// CPU seconds by process from the first create until every claim was seen Bound.
    cpu: Vec<(String, f64)>,
}

/// Where one claim's create-to-Bound time went.
#[derive(Clone, Copy)]
struct Phases {
    /// From sending the create until this client's watch saw the claim Bound.
    total: Duration,
    /// From sending the create until it returned.
    create: Duration,
    /// From sending the create until this client's watch first saw the claim (about when the
    /// operator's watch can first see it too).
    watched: Duration,
    /// From the operator's first sight of the claim until it wrote Bound (`waitMillis`).
    in_operator: Duration,
}

fn fake_spec(idle: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "sco-fake-connect:latest",
        "shared": 0,
        "hotPool": {"idle": idle, "max": idle.max(1) * 2, "maxServers": (idle.max(1) * 2).max(100), "maxWaitingClaims": 1000},
        "probe": {"period": "2s", "timeout": "1s"}
    })
}

/// Runs the benchmark against the world at `world`.
pub async fn run(
    world: PathBuf,
    spark: bool,
    only_spark: bool,
    spark_rounds: usize,
    concurrency: &[usize],
    rounds: Option<usize>,
    output: &str,
) -> anyhow::Result<()> {
    let bench = Bench::start(world).await?;
    let mut rows = Vec::new();
    // The floors' p99, to read each claim p99 against.
    let mut floors: Vec<(String, f64)> = Vec::new();
    if !only_spark {
        let status_floor =
            floor::StatusFloor::prepare(&bench.client, &bench.namespace, FLOOR_WRITES).await?;
        for row in [
            floor::configmaps(&bench.client, &bench.namespace, FLOOR_WRITES, 10).await?,
            floor::custom_status(&status_floor, 10).await?,
        ] {
            if let (Some(scenario), Some(p99)) = (row["scenario"].as_str(), row["p99_ms"].as_f64())
            {
                floors.push((scenario.to_string(), p99));
            }
            rows.push(row);
        }
        for &concurrency in concurrency {
            let rounds = rounds.unwrap_or(if concurrency == 1 { 20 } else { 10 });
            rows.push(
                bench
                    .warm_pool(concurrency, rounds, &floors, &status_floor)
                    .await?,
            );
        }
        status_floor.remove().await?;
    }
    if spark {
        let spark_rows =
            first_result::run(&bench.client, &bench.world, &bench.namespace, spark_rounds).await?;
        for (warm, speedup) in first_result::speedups(&spark_rows) {
            println!("{warm} vs cold start, claim to first result: {speedup:.1}x faster");
            rows.push(serde_json::json!({"scenario": format!("{warm}_speedup_over_cold_start"), "factor": speedup}));
        }
        rows.extend(spark_rows);
    }
    sco_e2e::remove_namespace(&bench.client, &bench.namespace).await?;
    report::write(output, &serde_json::Value::Array(rows))
}

/// The rounds of one warm-pool scenario, added up.
#[derive(Default)]
struct Rounds {
    /// Every claim's create-to-Bound time.
    samples: Vec<Duration>,
    /// The same, a list per round.
    per_round: Vec<Vec<Duration>>,
    /// Where each claim's time went.
    phases: Vec<Phases>,
    /// Each round's slowest claim.
    slowest: Vec<serde_json::Value>,
    /// Mean apiserver requests per burst, by verb and resource.
    requests: BTreeMap<String, f64>,
    /// Mean CPU seconds per burst, by process.
    cpu_seconds: BTreeMap<String, f64>,
    /// The p99 of the status-floor round run just before each burst, ms.
    paired_floor_p99s: Vec<f64>,
}

impl Rounds {
    /// Adds one of `rounds` bursts.
    fn add(&mut self, round: usize, rounds: usize, burst: Burst, paired_floor: &[Duration]) {
        self.paired_floor_p99s
            .push(report::percentile(paired_floor, 0.99));
        for (request, n) in burst.requests {
            *self.requests.entry(request).or_default() += n / rounds as f64;
        }
        for (process, seconds) in burst.cpu {
            *self.cpu_seconds.entry(process).or_default() += seconds / rounds as f64;
        }
        let totals: Vec<Duration> = burst.phases.iter().map(|p| p.total).collect();
        self.samples.extend(&totals);
        self.per_round.push(totals);
        if let Some(p) = burst.phases.iter().max_by_key(|p| p.total) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            self.slowest.push(serde_json::json!({
                "round": round, "total_ms": ms(p.total), "create_returned_ms": ms(p.create),
                "watch_saw_created_ms": ms(p.watched),
                "operator_first_sight_to_bind_ms": ms(p.in_operator),
            }));
        }
        self.phases.extend(burst.phases);
    }

    /// Each round's claim p99 over the p99 of the status-floor round just before it: the same
    /// machine state on both sides of the ratio (the floor measured once at the start of the
    /// run sees an apiserver without the pool, and its CPU per write drifts between runs).
    fn paired(&self) -> serde_json::Value {
        let ratios: Vec<f64> = self
            .per_round
            .iter()
            .zip(&self.paired_floor_p99s)
            .map(|(claims, floor)| report::percentile(claims, 0.99) / floor)
            .collect();
        let floor = report::Spread::of(&self.paired_floor_p99s);
        let ratio = report::Spread::of(&ratios);
        serde_json::json!({
            "floor_p99_ms": floor.median, "floor_p99_ms_spread": [floor.min, floor.max],
            "claim_p99_over_floor_p99": ratio.median,
            "claim_p99_over_floor_p99_spread": [ratio.min, ratio.max],
        })
    }

    /// The scenario's row, printed as it is made.
    fn row(self, concurrency: usize, floors: &[(String, f64)]) -> serde_json::Value {
        let rounds = self.per_round.len();
        let (p50s, p99s) = spread(&self.per_round);
        let phase = |f: fn(&Phases) -> Duration| {
            let values: Vec<Duration> = self.phases.iter().map(f).collect();
            serde_json::json!({"p50_ms": report::percentile(&values, 0.5), "p99_ms": report::percentile(&values, 0.99)})
        };
        let breakdown = serde_json::json!({
            "create_returned": phase(|p| p.create),
            "watch_saw_created": phase(|p| p.watched),
            "operator_first_sight_to_bind": phase(|p| p.in_operator),
            "client_saw_bound": phase(|p| p.total),
        });
        println!("  where the time went (p50/p99 over all rounds): {breakdown}");
        println!("  apiserver requests per burst (mean): {:?}", self.requests);
        let cpu_ms: BTreeMap<String, u64> = self
            .cpu_seconds
            .iter()
            .map(|(process, s)| (process.clone(), (s * 1000.0).round() as u64))
            .collect();
        println!("  CPU ms per burst by process (mean): {cpu_ms:?}");
        println!(
            "claim-to-Bound, warm pool, {concurrency} concurrent, {rounds} rounds: p50 {:.1} ms ({:.1}..{:.1}), p99 {:.1} ms ({:.1}..{:.1})",
            p50s.median, p50s.min, p50s.max, p99s.median, p99s.min, p99s.max
        );
        let p99_vs_floors: BTreeMap<&str, f64> = floors
            .iter()
            .map(|(floor, p99)| (floor.as_str(), p99s.median / p99))
            .collect();
        println!("  p99 over the floors' p99: {p99_vs_floors:?}");
        let paired = self.paired();
        println!("  paired with a status-floor round just before each burst: {paired}");
        serde_json::json!({
            "scenario": "claim_to_bound_warm_pool", "concurrency": concurrency, "rounds": rounds,
            "samples": self.samples.len(),
            "p50_ms": p50s.median, "p99_ms": p99s.median,
            "p50_ms_spread": [p50s.min, p50s.max], "p99_ms_spread": [p99s.min, p99s.max],
            "p50_ms_all": report::percentile(&self.samples, 0.5), "p99_ms_all": report::percentile(&self.samples, 0.99),
            "breakdown": breakdown, "apiserver_requests_per_burst": self.requests,
            "cpu_ms_per_burst_by_process": cpu_ms, "p99_vs_floor_p99": p99_vs_floors,
            "paired_status_floor": paired,
            "slowest_claim_per_round": self.slowest,
        })
    }
}
