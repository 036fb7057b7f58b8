//! Pool economics: one bursty claim trace (steady hours, a burst, quiet periods; a fixed seed)
//! replayed with time compressed against a static pool sized for the trace's peak, the
//! autoscaler, the autoscaler with the team's calendar as its schedule, and the settings the
//! simulation (`simulate.rs`) finds leanest, on fake servers that take a realistic (compressed)
//! time to start; an organisation's day (`--rate-scale`) against the autoscaler and its
//! leanest settings. Reports the hit rate (claims Bound within 1 s) and the idle
//! server-seconds against the ideal.
//!
//! The ideal: a claim is served at once only by a server that is already idle when it arrives,
//! and a server takes one start-up time `D` to get there; so even a pool that knew every
//! arrival to the instant keeps each claim's server up, unclaimed, for `D`, and the ideal for
//! `N` claims is `N × D` server-seconds, with `D` measured in the same run. The measured side
//! counts the same thing: servers up and not claimed, starting or idle. (Ready idle servers
//! alone are reported too; against `N × D` they would flatter the pool, since the ideal pool
//! has none.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sco_e2e::poll::until;
use spark_connect_operator::controller::context::MAX_REFILL_HOLD;
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};

use super::calendar::{CalendarWindow, calendar};
use super::least_idle;
use super::report::{self, Spread};
use super::simulate::{self, Policy};
use super::trace::{Arrival, Day, peak_within};

/// The bench, and the first part of its namespace's name.
const BENCH: &str = "bench-economics";
/// A claim Bound within this time is a hit.
const HIT: Duration = Duration::from_secs(1);
/// How long a fake server takes to start (Spark's 20–60 s start and warm-up, compressed).
const START_MILLIS: u64 = 3000;

/// `hotPool.refillDelay` of the bench's clusters: the operator's default, stated here so the
/// simulation that picks the leanest settings models the same pool.
const REFILL_DELAY: Duration = Duration::from_secs(2);

/// Autoscaler settings of a replayed pool.
#[derive(Clone, Copy, Debug)]
struct Autoscale {
    hit_rate_percent: u32,
    scale_down_delay: Duration,
}

/// The bench's autoscaler: the default share, a scale-down delay fit for compressed time.
const BENCH_AUTOSCALE: Autoscale = Autoscale {
    hit_rate_percent: 99,
    scale_down_delay: Duration::from_secs(20),
};

/// A pool of fake servers keeping `idle` idle servers, or autoscaled from there, allowed
/// servers in proportion to `day`'s claims.
fn spec(autoscale: Option<Autoscale>, idle: i32, day: Day) -> serde_json::Value {
    let autoscale = autoscale.map_or_else(
        || serde_json::json!({"enabled": false}),
        |a| {
            serde_json::json!({
                "enabled": true, "hitRatePercent": a.hit_rate_percent,
                "scaleDownDelay": format!("{}s", a.scale_down_delay.as_secs()),
            })
        },
    );
    serde_json::json!({
        "image": "sco-fake-connect:latest",
        "shared": 0,
        "hotPool": {
            "idle": idle, "min": 0, "max": simulate::max_idle(day),
            "maxServers": (100.0 * day.rate_scale.max(1.0)).ceil().min(2000.0) as i32, "maxWaitingClaims": 1000,
            "refillDelay": format!("{}ms", REFILL_DELAY.as_millis()),
            "autoscale": autoscale
        },
        "probe": {"period": "1s", "timeout": "500ms"},
        // The fake servers take as long to start as a small JVM.
        "sparkConf": {"spark.sco.fake.startMillis": START_MILLIS.to_string()}
    })
}

/// What one replay measured.
struct Replay {
    claims: usize,
    hits: usize,
    waits: Vec<Duration>,
    /// Claims not Bound within [`HIT`]: arrival (seconds into the trace) and wait in seconds.
    misses: Vec<(f64, f64)>,
    idle_server_seconds: f64,
    /// Of those, the ready idle ones' (starting ones left out).
    ready_idle_server_seconds: f64,
    /// Creation to idle of the servers started during the replay.
    start_times: Vec<Duration>,
    /// The same with each server's creation (seconds into the trace), to see how start-up
    /// grows when many servers start at once.
    starts: Vec<(f64, f64)>,
}

/// A pool replayed for real: its name, the replay, and what the model predicted for it.
type Measured = (String, Replay, Option<simulate::Outcome>);

/// Runs the benchmark against the world at `world` on `day`, writing
/// `target/bench/<output>.json`. One team's day replays every pool; a busier day only the
/// autoscaler and the settings the model finds leanest (each replay takes minutes, and the
/// team's day already shows what a static pool and the calendar do).
pub async fn run(world: PathBuf, day: Day, output: &str) -> anyhow::Result<()> {
    let client = sco_e2e::world_client(&world).await?;
    let ns = sco_e2e::fresh_namespace(&client, BENCH).await?;
    let trace = day.trace();
    let length = trace.last().map(|a| a.at + a.hold).unwrap_or_default();
    println!(
        "trace: {} claims over {:.0} s (compressed, arrival rates x{}), fake servers start in {START_MILLIS} ms",
        trace.len(),
        length.as_secs_f64(),
        day.rate_scale
    );
    // The static pool is sized for the peak within a start-up time measured by a first replay
    // of the autoscaler, so every pool faces the same servers.
    let stage = Stage {
        client: &client,
        ns: &ns,
        trace: &trace,
    };
    let autoscaled = stage
        .replay("autoscaled", spec(Some(BENCH_AUTOSCALE), 1, day), &[])
        .await?;
    let start = Duration::from_secs_f64(
        Spread::of(
            &autoscaled
                .start_times
                .iter()
                .map(Duration::as_secs_f64)
                .collect::<Vec<_>>(),
        )
        .median,
    );
    let static_size = peak_within(&trace, start).max(1);
    let calendar = calendar(day, start);
    let mut pools = if day == Day::TEAM {
        team_pools(&stage, autoscaled, static_size, &calendar).await?
    } else {
        vec![("autoscaler".into(), autoscaled, None)]
    };
    let modelled = simulate::Conditions {
        day,
        start,
        refill_delay: REFILL_DELAY,
        burst_hold: MAX_REFILL_HOLD,
    };
    pools.extend(leanest(&stage, &modelled, &calendar).await?);
    let ideal = trace.len() as f64 * start.as_secs_f64();
    let rows = pool_rows(&pools, ideal);
    let (least, knowing) = rate_knowing(&trace, &modelled);
    sco_e2e::remove_namespace(&client, &ns).await?;
    report::write(
        output,
        &serde_json::json!({
            "rate_scale": day.rate_scale,
            "trace_claims": trace.len(), "trace_seconds": length.as_secs_f64(),
            "server_start_median_s": start.as_secs_f64(), "static_pool_idle": static_size,
            "schedule": calendar.iter().map(|w| serde_json::json!({
                "at_s": w.at, "for_s": w.length, "idle": w.idle, "what": w.what,
            })).collect::<Vec<_>>(),
            "pools": rows,
            "least_idle_knowing_the_rates": least,
            "model_pool_knowing_the_rates": knowing,
        }),
    )
}

/// The pools of one team's day: a static pool of `static_size` and the bench's autoscaler with
/// `calendar` as its schedule replayed, beside the `autoscaled` replay.
async fn team_pools(
    stage: &Stage<'_>,
    autoscaled: Replay,
    static_size: usize,
    calendar: &[CalendarWindow],
) -> anyhow::Result<Vec<Measured>> {
    let day = Day::TEAM;
    let fixed = stage
        .replay("static", spec(None, i32::try_from(static_size)?, day), &[])
        .await?;
    let scheduled = stage
        .replay("scheduled", spec(Some(BENCH_AUTOSCALE), 1, day), calendar)
        .await?;
    Ok(vec![
        ("static".into(), fixed, None),
        ("autoscaler".into(), autoscaled, None),
        ("autoscaler+schedule".into(), scheduled, None),
    ])
}

/// The settings the model finds leanest for 99 % of claims within 1 s `under` the measured
/// conditions, replayed for real, beside the model's prediction.
async fn leanest(
    stage: &Stage<'_>,
    under: &simulate::Conditions,
    calendar: &[CalendarWindow],
) -> anyhow::Result<Option<Measured>> {
    let Some((policy, predicted)) = simulate::leanest(stage.trace, under, 0.99) else {
        return Ok(None);
    };
    let Policy::Autoscale {
        hit_rate,
        scale_down_delay,
        schedule,
    } = policy
    else {
        return Ok(None);
    };
    let settings = Autoscale {
        hit_rate_percent: (hit_rate * 100.0).round() as u32,
        scale_down_delay,
    };
    let windows: &[CalendarWindow] = if schedule { calendar } else { &[] };
    let lean = stage
        .replay("lean", spec(Some(settings), 1, under.day), windows)
        .await?;
    let name = format!("leanest by simulation: {}", policy.describe());
    Ok(Some((name, lean, Some(predicted))))
}

/// Prints each pool's replay against the `ideal` and returns them as rows.
fn pool_rows(pools: &[Measured], ideal: f64) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for (name, r, predicted) in pools {
        let hit_rate = r.hits as f64 / r.claims.max(1) as f64;
        let ratio = r.idle_server_seconds / ideal;
        println!(
            "{name}: {}/{} claims Bound within 1 s ({:.1} %), wait p50 {:.0} ms p99 {:.0} ms; unclaimed (starting or idle) server-seconds {:.0} = {ratio:.2}x the ideal {ideal:.0} (ready idle alone {:.0})",
            r.hits,
            r.claims,
            hit_rate * 100.0,
            report::percentile(&r.waits, 0.5),
            report::percentile(&r.waits, 0.99),
            r.idle_server_seconds,
            r.ready_idle_server_seconds
        );
        rows.push(serde_json::json!({
            "pool": name, "claims": r.claims, "hits_within_1s": r.hits, "hit_rate": hit_rate,
            "wait_p50_ms": report::percentile(&r.waits, 0.5), "wait_p99_ms": report::percentile(&r.waits, 0.99),
            "idle_server_seconds": r.idle_server_seconds, "ideal_idle_server_seconds": ideal,
            "ready_idle_server_seconds": r.ready_idle_server_seconds,
            "misses_arrival_and_wait_s": r.misses,
            "server_created_s_and_start_s": r.starts,
            "idle_vs_ideal": ratio,
            "simulated": predicted.map(|p| serde_json::json!({
                "hit_rate": p.hit_rate(), "idle_vs_ideal": p.vs_ideal,
            })),
        }));
    }
    rows
}

/// What knowing each phase's rate would buy on the trace: the estimate of the least idle
/// capacity, and a model pool that knows the rates replayed `under` the measured conditions.
fn rate_knowing(
    trace: &[Arrival],
    under: &simulate::Conditions,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let least = least_idle::report(under.day, under.start, HIT, trace.len());
    let policy = Policy::KnowsRates { share: 0.99 };
    let knowing = simulate::replay(trace, policy, under);
    println!(
        "in the model, {}: {:.1} % within 1 s at {:.2}x the ideal",
        policy.describe(),
        knowing.hit_rate() * 100.0,
        knowing.vs_ideal
    );
    let row = serde_json::json!({
        "policy": policy.describe(), "hit_rate": knowing.hit_rate(),
        "idle_vs_ideal": knowing.vs_ideal,
    });
    (least, row)
}

/// The calendar as `hotPool.schedule`, for a day that starts at `t0` (whole seconds, UTC).
fn schedule_spec(calendar: &[CalendarWindow], t0: jiff::Timestamp) -> serde_json::Value {
    let windows: Vec<serde_json::Value> = calendar
        .iter()
        .map(|w| {
            let opens =
                (t0 + jiff::SignedDuration::from_secs_f64(w.at)).to_zoned(jiff::tz::TimeZone::UTC);
            serde_json::json!({
                "start": format!(
                    "{} {} {} {} {} *",
                    opens.second(),
                    opens.minute(),
                    opens.hour(),
                    opens.day(),
                    opens.month()
                ),
                "duration": format!("{}ms", (w.length * 1000.0).round() as u64),
                "idle": w.idle,
            })
        })
        .collect();
    serde_json::Value::Array(windows)
}

/// Time between writing the schedule and the start of the day: more than a server's start-up
/// time, so the day's first window can fill ahead of it.
const SCHEDULE_AHEAD: Duration = Duration::from_secs(15);

/// Where the pools are replayed: the world's client, the bench's namespace, the trace.
struct Stage<'a> {
    client: &'a Client,
    ns: &'a str,
    trace: &'a [Arrival],
}

impl Stage<'_> {
    /// Replays the trace against a new cluster `name` of `spec`, with `calendar` as its
    /// schedule; deletes the cluster after.
    async fn replay(
        &self,
        name: &str,
        spec: serde_json::Value,
        calendar: &[CalendarWindow],
    ) -> anyhow::Result<Replay> {
        let (client, ns, trace) = (self.client, self.ns, self.trace);
        let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
        let claims: Api<SparkConnectClaim> = Api::namespaced(client.clone(), ns);
        let cluster: SparkConnectCluster =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))?;
        let idle_target = cluster.spec.hot_pool.idle;
        clusters.create(&PostParams::default(), &cluster).await?;
        sco_e2e::cluster_status_until(
            &clusters,
            name,
            "the pool filled",
            Duration::from_secs(300),
            |s| s.servers.idle >= idle_target,
        )
        .await?;

        let bound_at = watch_bound(&claims);
        let started_servers = watch_starts(client, ns, name);
        let idle_seconds: Shared<UnclaimedSeconds> = Arc::default();
        let sampling = sample_idle(clusters.clone(), name.to_string(), idle_seconds.clone());

        let t0 = if calendar.is_empty() {
            Instant::now()
        } else {
            // The day starts on a whole second, the schedule's windows are written against it,
            // and its servers (counted from now) start ahead of it.
            let now = jiff::Timestamp::now();
            let day = jiff::Timestamp::from_second(now.as_second() + 1)? + SCHEDULE_AHEAD;
            let patch = serde_json::json!({"spec": {"hotPool": {"schedule": schedule_spec(calendar, day)}}});
            clusters
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Instant::now() + Duration::try_from(jiff::Timestamp::now().duration_until(day))?
        };
        let mut created = HashMap::new();
        let mut releases: Vec<(Instant, String)> = Vec::new();
        for (i, arrival) in trace.iter().enumerate() {
            release_due(&claims, &mut releases).await;
            tokio::time::sleep_until((t0 + arrival.at).into()).await;
            let claim_name = format!("{name}-{i:03}");
            let claim: SparkConnectClaim = serde_json::from_value(serde_json::json!({
                "metadata": {"name": claim_name}, "spec": {"cluster": name, "user": "bench"}
            }))?;
            let at = Instant::now();
            claims.create(&PostParams::default(), &claim).await?;
            created.insert(claim_name.clone(), at);
            releases.push((at + arrival.hold, claim_name));
        }
        while !releases.is_empty() {
            let next = releases
                .iter()
                .map(|(t, _)| *t)
                .min()
                .unwrap_or_else(Instant::now);
            tokio::time::sleep_until(next.into()).await;
            release_due(&claims, &mut releases).await;
        }
        sampling.abort();
        started_servers.1.abort();
        bound_at.1.abort();
        let bound = bound_at.0.lock().map(|b| b.clone()).unwrap_or_default();
        let waits: Vec<Duration> = created
            .iter()
            .map(|(claim, at)| {
                bound
                    .get(claim)
                    .map_or(Duration::from_secs(3600), |b| b.duration_since(*at))
            })
            .collect();
        let hits = waits.iter().filter(|w| **w <= HIT).count();
        let mut misses: Vec<(f64, f64)> = created
            .iter()
            .filter_map(|(claim, at)| {
                let wait = bound
                    .get(claim)
                    .map_or(f64::INFINITY, |b| b.duration_since(*at).as_secs_f64());
                (wait > HIT.as_secs_f64()).then(|| (at.duration_since(t0).as_secs_f64(), wait))
            })
            .collect();
        misses.sort_by(|a, b| a.0.total_cmp(&b.0));
        let seen = started_servers
            .0
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let start_times: Vec<Duration> = seen.iter().map(|(_, age)| *age).collect();
        let starts = seen
            .iter()
            .filter_map(|(idle_at, age)| {
                let created = idle_at.checked_sub(*age)?;
                let offset = if created >= t0 {
                    created.duration_since(t0).as_secs_f64()
                } else {
                    -t0.duration_since(created).as_secs_f64()
                };
                Some((offset, age.as_secs_f64()))
            })
            .collect();
        let unclaimed = idle_seconds.lock().map(|s| *s).unwrap_or_default();
        clusters.delete(name, &DeleteParams::default()).await?;
        until(
            "the cluster gone",
            Duration::from_secs(300),
            Duration::from_millis(500),
            || async { clusters.get_opt(name).await.ok().flatten().is_none() },
        )
        .await?;
        Ok(Replay {
            claims: created.len(),
            hits,
            waits,
            misses,
            idle_server_seconds: unclaimed.up,
            ready_idle_server_seconds: unclaimed.ready,
            start_times,
            starts,
        })
    }
}

/// Deletes the claims whose hold time is over (their servers are retired and refilled).
async fn release_due(claims: &Api<SparkConnectClaim>, releases: &mut Vec<(Instant, String)>) {
    let now = Instant::now();
    let (due, later): (Vec<_>, Vec<_>) = releases.drain(..).partition(|(t, _)| *t <= now);
    *releases = later;
    for (_, claim) in due {
        let _ = claims.delete(&claim, &DeleteParams::default()).await;
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// When each claim was first seen Bound.
fn watch_bound(
    claims: &Api<SparkConnectClaim>,
) -> (
    Shared<HashMap<String, Instant>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: Shared<HashMap<String, Instant>> = Arc::default();
    let writer = seen.clone();
    let stream = watcher(claims.clone(), watcher::Config::default()).applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(claim)) = stream.next().await {
            let bound = claim
                .status
                .as_ref()
                .is_some_and(|s| s.phase == ClaimPhase::Bound);
            if bound && let Ok(mut seen) = writer.lock() {
                seen.entry(claim.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    (seen, task)
}

/// When each server of `cluster` (in `ns`) was first seen idle while watched, and its
/// creation to idle.
fn watch_starts(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> (
    Shared<Vec<(Instant, Duration)>>,
    tokio::task::JoinHandle<()>,
) {
    let times: Shared<Vec<(Instant, Duration)>> = Arc::default();
    let writer = times.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("sparkconnect.dev/cluster={cluster}"));
    let stream = watcher(pods, config).applied_objects();
    let task = tokio::spawn(async move {
        let mut counted = std::collections::HashSet::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(pod)) = stream.next().await {
            let idle = pod
                .labels()
                .get("sparkconnect.dev/state")
                .map(String::as_str)
                == Some("idle");
            let Some(created) = pod.metadata.creation_timestamp.as_ref() else {
                continue;
            };
            if idle && counted.insert(pod.name_any()) {
                let age = jiff::Timestamp::now().duration_since(created.0);
                if let (Ok(age), Ok(mut times)) = (Duration::try_from(age), writer.lock()) {
                    times.push((Instant::now(), age));
                }
            }
        }
    });
    (times, task)
}

/// Server-seconds of servers up and not claimed.
#[derive(Clone, Copy, Debug, Default)]
struct UnclaimedSeconds {
    /// Starting or idle.
    up: f64,
    /// Idle (ready) only.
    ready: f64,
}

/// Integrates the cluster's unclaimed servers over time, sampled every 250 ms.
fn sample_idle(
    clusters: Api<SparkConnectCluster>,
    name: String,
    total: Shared<UnclaimedSeconds>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_millis(250);
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let (starting, idle) = clusters
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .map_or((0, 0), |s| (s.servers.starting, s.servers.idle));
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            if let Ok(mut total) = total.lock() {
                total.up += f64::from(starting + idle) * dt;
                total.ready += f64::from(idle) * dt;
            }
            last = now;
        }
    })
}
