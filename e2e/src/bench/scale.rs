//! Scale: N clusters (most with an idle target of 0, a few with one fake server) converge after
//! the operator starts. The operator is scaled to zero, the clusters are created, one replica
//! is started and the clock runs until every cluster's status describes its generation and the
//! pools with servers are full. Prints the time, the operator's API requests by verb, its CPU
//! seconds and peak RSS, and the writes made in a quiet minute after (the steady state).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use sco_e2e::operator::{self, Usage, metric_sum};
use sco_e2e::poll::until;
use spark_connect_operator::crd::SparkConnectCluster;

use super::report;

/// The bench, and the first part of its namespace's name.
const BENCH: &str = "bench-scale";
const DEPLOYMENT: &str = "sco-spark-connect-operator";
const VERBS: [&str; 7] = ["GET", "WATCH", "POST", "PUT", "PATCH", "DELETE", "OTHER"];

fn spec(idle: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "sco-fake-connect:latest",
        "shared": 0,
        "hotPool": {"idle": idle, "max": 2},
        "probe": {"period": "10s", "timeout": "1s"}
    })
}

/// Runs the benchmark against the world at `world` with `clusters` clusters, `with_servers`
/// of which keep one idle server.
pub async fn run(world: PathBuf, clusters: usize, with_servers: usize) -> anyhow::Result<()> {
    let client = sco_e2e::world_client(&world).await?;
    let world_bin = std::env::current_exe()?.with_file_name("sco-world");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &operator::namespace());
    let replicas = deployments
        .get(DEPLOYMENT)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    // Made while the operator runs: leftovers of an earlier run need it to let their clusters go.
    let ns = sco_e2e::fresh_namespace(&client, BENCH).await?;
    scale(&client, &deployments, 0).await?;
    let result = measure(
        &client,
        &ns,
        &world_bin,
        &world,
        &deployments,
        clusters,
        with_servers,
    )
    .await;
    // The clusters' finalizer needs a running operator to let the namespace go.
    scale(&client, &deployments, replicas).await?;
    sco_e2e::remove_namespace(&client, &ns).await?;
    report::write("scale", &result?)
}

async fn measure(
    client: &Client,
    ns: &str,
    world_bin: &Path,
    world: &Path,
    deployments: &Api<Deployment>,
    count: usize,
    with_servers: usize,
) -> anyhow::Result<serde_json::Value> {
    let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
    let creates = futures::stream::iter(0..count).map(|i| {
        let clusters = clusters.clone();
        async move {
            let idle = if i < with_servers { 1 } else { 0 };
            let cluster: SparkConnectCluster = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("c{i:04}")}, "spec": spec(idle)
            }))?;
            clusters.create(&PostParams::default(), &cluster).await?;
            anyhow::Ok(())
        }
    });
    let created: Vec<anyhow::Result<()>> = creates.buffer_unordered(32).collect().await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "created {count} clusters ({with_servers} with one idle server); starting the operator"
    );

    let started = Instant::now();
    scale(client, deployments, 1).await?;
    until(
        "every cluster converged",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async { converged(&clusters, count).await },
    )
    .await?;
    let took = started.elapsed();
    let leader = operator::leader(client).await.context("no leader")?;
    let after_start = snapshot(client, world_bin, world, &leader).await?;
    println!(
        "converged in {:.1} s after the operator was scaled up (polled every 0.5 s); operator: {:.1} CPU-s, peak RSS {:.1} MB",
        took.as_secs_f64(),
        after_start.usage.cpu_seconds,
        after_start.usage.peak_rss_mb
    );
    // A quiet minute: the steady state must make no writes.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let quiet = snapshot(client, world_bin, world, &leader).await?;
    let writes_at_rest = quiet.writes - after_start.writes;
    let cpu_at_rest = quiet.usage.cpu_seconds - after_start.usage.cpu_seconds;
    println!(
        "steady state, 60 s: {writes_at_rest} writes, {cpu_at_rest:.2} CPU-s; RSS {:.1} MB (peak {:.1} MB)",
        quiet.usage.rss_mb, quiet.usage.peak_rss_mb
    );
    println!(
        "API requests by verb until converged: {}",
        after_start.requests
    );
    Ok(serde_json::json!({
        "clusters": count,
        "clusters_with_servers": with_servers,
        "converge_seconds": took.as_secs_f64(),
        "api_requests_by_verb": after_start.requests,
        "api_writes": after_start.writes,
        "operator_cpu_seconds": after_start.usage.cpu_seconds,
        "operator_peak_rss_mb": after_start.usage.peak_rss_mb,
        "steady_state_writes_per_minute": writes_at_rest,
        "steady_state_cpu_seconds_per_minute": cpu_at_rest,
        "steady_state_rss_mb": quiet.usage.rss_mb,
    }))
}

/// Whether every cluster's status describes its generation and the pools with servers hold one.
async fn converged(clusters: &Api<SparkConnectCluster>, count: usize) -> bool {
    let Ok(list) = clusters.list(&ListParams::default()).await else {
        return false;
    };
    let done = list
        .items
        .iter()
        .filter(|c| {
            let Some(status) = &c.status else {
                return false;
            };
            let current = status.observed_generation == c.metadata.generation;
            current && (c.spec.hot_pool.idle == 0 || status.servers.idle >= c.spec.hot_pool.idle)
        })
        .count();
    list.items.len() == count && done == count
}

/// The operator's figures at one moment.
struct Snapshot {
    usage: Usage,
    requests: serde_json::Value,
    writes: f64,
}

async fn snapshot(
    client: &Client,
    world_bin: &Path,
    world: &Path,
    leader: &str,
) -> anyhow::Result<Snapshot> {
    let metrics = operator::metrics(client, world_bin, world).await;
    let requests: serde_json::Map<String, serde_json::Value> = VERBS
        .iter()
        .map(|verb| {
            let n = metric_sum(
                &metrics,
                "spark_connect_operator_api_requests_total",
                &format!("verb=\"{verb}\""),
            );
            (verb.to_string(), serde_json::json!(n))
        })
        .filter(|(_, n)| n.as_f64().is_some_and(|n| n > 0.0))
        .collect();
    let writes = metric_sum(
        &metrics,
        "spark_connect_operator_api_write_requests_total",
        "",
    );
    let usage = operator::pod_usage(world_bin, world, &operator::namespace(), leader)
        .context("the operator's process usage")?;
    Ok(Snapshot {
        usage,
        requests: serde_json::Value::Object(requests),
        writes,
    })
}

/// Scales the operator's Deployment and waits until that many of its pods run (or none is left).
async fn scale(
    client: &Client,
    deployments: &Api<Deployment>,
    replicas: i32,
) -> anyhow::Result<()> {
    deployments
        .patch(
            DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &operator::namespace());
    until(
        "the operator's pods",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let Ok(list) = pods
                .list(
                    &ListParams::default().labels("app.kubernetes.io/name=spark-connect-operator"),
                )
                .await
            else {
                return false;
            };
            let running = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            if replicas == 0 {
                list.items.is_empty()
            } else {
                running == usize::try_from(replicas).unwrap_or(0)
                    && operator::leader(client)
                        .await
                        .is_some_and(|l| list.items.iter().any(|p| p.name_any() == l))
            }
        },
    )
    .await?;
    Ok(())
}
