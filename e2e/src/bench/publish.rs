//! The CPU a cluster's reconcile spends on its servers' Services and EndpointSlices, in this
//! process (no world): building each wanted object and checking it against the stored copy,
//! either whole (an object not seen before, or changed since) or by digest (one the cluster's
//! last reconcile found as wanted, `controller/applied.rs`), for pools of several sizes. The
//! stored copies carry what the apiserver adds (uid, resourceVersion, managedFields, defaults).

use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use spark_connect_operator::builders::service::{
    Backend, MUST_STAY_ABSENT, endpoint_slice, server_service,
};
use spark_connect_operator::controller::applied::{self, Applied, Scope};
use spark_connect_operator::controller::apply::covers;
use spark_connect_operator::crd::SparkConnectCluster;
use spark_connect_operator::validate::{ValidCluster, validate};

use super::report::{self, median};

/// Passes over the pool per measurement.
const REPETITIONS: usize = 50;
/// Cluster key of the measured pool in the memo.
const KEY: &str = "bench/analytics";

/// One server's stored Service and EndpointSlice.
struct Stored {
    name: String,
    backend: Backend,
    service: Service,
    slice: EndpointSlice,
}

/// Measures pools of `sizes` servers and writes `target/bench/<output>.json`.
pub fn run(sizes: &[usize], output: &str) -> anyhow::Result<()> {
    let cluster: SparkConnectCluster = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "analytics", "namespace": "bench",
            "uid": "4f9b7a52-0d2c-4c1e-9f4e-1b2a3c4d5e6f", "generation": 1},
        "spec": {"image": "apache/spark:4.3.0"}
    }))?;
    let valid = validate(&cluster)?;
    let mut rows = Vec::new();
    for &servers in sizes {
        let pool: Vec<Stored> = (0..servers).map(|i| stored(&valid, i)).collect();
        let applied = Applied::default();
        let whole = time(|| check_whole(&valid, &pool, &applied.scope(KEY)))?;
        let by_digest = time(|| check_by_digest(&valid, &pool, &applied.scope(KEY)))?;
        println!(
            "publishing {servers} servers: checked whole {:.2} ms, by digest {:.2} ms per reconcile (median of {REPETITIONS})",
            whole * 1e3,
            by_digest * 1e3
        );
        rows.push(serde_json::json!({
            "servers": servers, "repetitions": REPETITIONS,
            "checked_whole_ms_per_reconcile": whole * 1e3,
            "checked_by_digest_ms_per_reconcile": by_digest * 1e3,
        }));
    }
    report::write(output, &serde_json::Value::Array(rows))
}

/// Median seconds of `pass`.
fn time(mut pass: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut seconds = Vec::with_capacity(REPETITIONS);
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        pass()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(median(&seconds))
}

/// Server `server`'s wanted Service and EndpointSlice, each with its digest.
struct Wanted {
    service: (Service, u64),
    slice: (EndpointSlice, u64),
}

fn wanted(valid: &ValidCluster, server: &Stored) -> anyhow::Result<Wanted> {
    let service = server_service(valid, &server.name);
    let service_digest = applied::wanted(&service, valid.uid, MUST_STAY_ABSENT)?;
    let backends = std::slice::from_ref(&server.backend);
    let slice = endpoint_slice(valid, &server.name, false, backends);
    let slice_digest = applied::wanted(&slice, valid.uid, &[])?;
    Ok(Wanted {
        service: (service, service_digest),
        slice: (slice, slice_digest),
    })
}

/// What a reconcile does for objects it has not found as wanted before: build, serialise both
/// sides, compare; each is then remembered.
fn check_whole(valid: &ValidCluster, pool: &[Stored], seen: &Scope) -> anyhow::Result<()> {
    for server in pool {
        let Wanted { service, slice } = wanted(valid, server)?;
        anyhow::ensure!(covers(
            &serde_json::to_value(&server.service)?,
            &serde_json::to_value(&service.0)?
        ));
        seen.keep(&server.service, service.1);
        anyhow::ensure!(covers(
            &serde_json::to_value(&server.slice)?,
            &serde_json::to_value(&slice.0)?
        ));
        seen.keep(&server.slice, slice.1);
    }
    Ok(())
}

/// What a reconcile does for objects its last reconcile found as wanted: build, digest, look up.
fn check_by_digest(valid: &ValidCluster, pool: &[Stored], seen: &Scope) -> anyhow::Result<()> {
    for server in pool {
        let Wanted { service, slice } = wanted(valid, server)?;
        anyhow::ensure!(seen.unchanged(&server.service, service.1));
        anyhow::ensure!(seen.unchanged(&server.slice, slice.1));
    }
    Ok(())
}

/// Server `i`'s Service and EndpointSlice as the apiserver would return them.
fn stored(valid: &ValidCluster, i: usize) -> Stored {
    let name = format!("analytics-{i:05}");
    let backend = Backend {
        pod: name.clone(),
        uid: format!("pod-uid-{i}"),
        ip: format!("10.244.{}.{}", i / 250, i % 250 + 2),
    };
    let mut service = server_service(valid, &name);
    as_stored(&mut service, i, "Service");
    if let Some(spec) = service.spec.as_mut() {
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy = Some("SingleStack".into());
        spec.session_affinity = Some("None".into());
        spec.type_ = Some("ClusterIP".into());
    }
    let mut slice = endpoint_slice(valid, &name, false, std::slice::from_ref(&backend));
    as_stored(&mut slice, i, "EndpointSlice");
    Stored {
        name,
        backend,
        service,
        slice,
    }
}

/// Adds what the apiserver adds to every object: uid, resourceVersion, creation time and the
/// operator's managedFields entry.
fn as_stored<K: Resource>(object: &mut K, i: usize, kind: &str) {
    let meta = object.meta_mut();
    meta.uid = Some(format!("{kind}-uid-{i}"));
    meta.resource_version = Some(format!("{}", 100_000 + i));
    meta.creation_timestamp = jiff::Timestamp::from_second(1_800_000_000)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    meta.managed_fields = serde_json::from_value(serde_json::json!([{
        "manager": "spark-connect-operator", "operation": "Apply", "apiVersion": "v1",
        "time": "2027-01-15T08:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/name": {},
            "f:app.kubernetes.io/instance": {}, "f:sparkconnect.dev/cluster": {},
            "f:sparkconnect.dev/server": {}},
            "f:ownerReferences": {"k:{\"uid\":\"4f9b7a52-0d2c-4c1e-9f4e-1b2a3c4d5e6f\"}": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":15002,\"protocol\":\"TCP\"}": {".": {},
                "f:name": {}, "f:port": {}, "f:protocol": {}}}}}
    }]))
    .ok();
}
