//! What finding one cluster's objects costs when the operator watches many pools, in this
//! process (no world): the server pods of pools of 100 in one namespace, read for one cluster
//! through the operator's per-cluster index (`src/store_index.rs`) and, for comparison, by a
//! scan of the whole store filtered by namespace and cluster label (how every reconcile and
//! every bind read before the index). Each cluster reconcile reads its pods, claims, Services
//! and slices this way, and each claim's bind its pods and its cluster's bind ledger. Also reported: the
//! memory the index adds beside kube's store, as the allocator counts it.

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use spark_connect_operator::builders::labels::{CLUSTER_LABEL, ServerRole};
use spark_connect_operator::builders::pod::{ServerIdentity, server_pod};
use spark_connect_operator::crd::SparkConnectCluster;
use spark_connect_operator::store_index::{indexed, labelled};
use spark_connect_operator::validate::validate;

use super::report::{self, median};

/// Servers in each pool.
const POOL: usize = 100;
/// Reads timed per measurement (cycling through the pools).
const READS: usize = 400;
/// The namespace every pool is in (the scan's worst case and the index's too).
const NAMESPACE: &str = "bench";

/// Measures stores of `sizes` pods and writes `target/bench/<output>.json`.
pub fn run(sizes: &[usize], output: &str) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &pods in sizes {
        let pools = pods.div_ceil(POOL).max(1);
        let objects = server_pods(pools)?;
        let events = || {
            std::iter::once(Event::Init)
                .chain(objects.iter().cloned().map(Event::InitApply))
                .chain(std::iter::once(Event::InitDone))
        };
        let before = allocated_mb()?;
        let (store, mut writer) = reflector::store::<Pod>();
        events().for_each(|e| writer.apply_watcher_event(&e));
        let store_mb = allocated_mb()? - before;
        let before = allocated_mb()?;
        let (index, mut index_writer) = indexed(labelled::<Pod>);
        events().for_each(|e| index_writer.apply_watcher_event(&e));
        // The indexed store holds its own copy of every pod: what the index adds is what it
        // allocates beyond a plain store.
        let index_mb = (allocated_mb()? - before) - store_mb;
        let cluster = |i: usize| pool_name(i % pools);
        let scan = time(|i| {
            let name = cluster(i);
            store
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace().as_deref() == Some(NAMESPACE)
                        && p.labels().get(CLUSTER_LABEL) == Some(&name)
                })
                .count()
        })?;
        let by_index = time(|i| index.of_cluster(NAMESPACE, &cluster(i)).len())?;
        println!(
            "one pool's {POOL} servers among {} pods in {pools} pools: scan {:.1} µs, index {:.1} µs per read (median of {READS}); index {:.2} MB beside the store's {:.1} MB (allocated)",
            objects.len(),
            scan * 1e6,
            by_index * 1e6,
            index_mb,
            store_mb
        );
        rows.push(serde_json::json!({
            "pods": objects.len(), "pools": pools, "servers_per_pool": POOL, "reads": READS,
            "scan_us_per_read": scan * 1e6, "index_us_per_read": by_index * 1e6,
            "index_mb": index_mb, "store_mb": store_mb,
        }));
    }
    report::write(output, &serde_json::Value::Array(rows))
}

/// Bytes the allocator has handed out and not taken back, in MiB (jemalloc's own count).
fn allocated_mb() -> anyhow::Result<f64> {
    tikv_jemalloc_ctl::epoch::advance().map_err(|e| anyhow::anyhow!("jemalloc epoch: {e}"))?;
    let bytes = tikv_jemalloc_ctl::stats::allocated::read()
        .map_err(|e| anyhow::anyhow!("jemalloc stats: {e}"))?;
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

/// Median seconds of `read(i)`, each read checked to find a whole pool.
fn time(mut read: impl FnMut(usize) -> usize) -> anyhow::Result<f64> {
    let mut seconds = Vec::with_capacity(READS);
    for i in 0..READS {
        let started = Instant::now();
        let found = read(i);
        seconds.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(found == POOL, "read {found} servers of a pool of {POOL}");
    }
    Ok(median(&seconds))
}

fn pool_name(i: usize) -> String {
    format!("pool-{i:04}")
}

/// `pools` pools of [`POOL`] server pods each, as the operator builds them, with what the
/// apiserver adds (uid, resourceVersion).
fn server_pods(pools: usize) -> anyhow::Result<Vec<Pod>> {
    let mut pods = Vec::with_capacity(pools * POOL);
    for p in 0..pools {
        let name = pool_name(p);
        let cluster: SparkConnectCluster = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": NAMESPACE,
                "uid": format!("cluster-uid-{p}"), "generation": 1},
            "spec": {"image": "apache/spark:4.3.0"}
        }))?;
        let valid = validate(&cluster)?;
        for s in 0..POOL {
            let server = format!("{name}-{s:03}");
            let identity = ServerIdentity {
                name: &server,
                role: ServerRole::Pool,
                hash: "0123abcd",
            };
            let mut pod = server_pod(&valid, identity)?;
            pod.metadata.uid = Some(format!("pod-uid-{p}-{s}"));
            pod.metadata.resource_version = Some(format!("{}", 100_000 + p * POOL + s));
            pods.push(pod);
        }
    }
    Ok(pods)
}
