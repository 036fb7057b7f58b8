//! The apiserver's own write floor on this machine, measured in the same run as the claims so
//! their figures read as a ratio to it: `n` parallel patches on warm connections (one
//! unmeasured round first), of ConfigMaps (the cheapest write there is) and of a custom
//! resource's status subresource (the kind of write a bind makes: a claim's status), the
//! latter on a bench-only CustomResourceDefinition that no controller watches. Its objects stay
//! for the whole run, so the claims bench can also run a single round of it right before each
//! burst and read the burst against the machine as it is at that moment.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;

use super::cpu;
use super::report::{self, Spread, median};

/// The bench-only resource whose status the second floor patches.
const FLOOR_CRD: &str = "writefloors.bench.sparkconnect.dev";

/// p50 and p99 of each round's samples.
pub fn spread(rounds: &[Vec<Duration>]) -> (Spread, Spread) {
    let of = |p: f64| {
        let values: Vec<f64> = rounds.iter().map(|r| report::percentile(r, p)).collect();
        Spread::of(&values)
    };
    (of(0.5), of(0.99))
}

/// `n` parallel merge patches of ConfigMaps.
pub async fn configmaps(
    client: &Client,
    namespace: &str,
    n: usize,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let names = names(n);
    for name in &names {
        if maps.get_opt(name).await?.is_none() {
            let map: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
            maps.create(&PostParams::default(), &map).await?;
        }
    }
    let row = measure("apiserver_write_floor", "patches of ConfigMaps", &names, rounds, |name, round| {
        let maps = maps.clone();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {"bench/round": round.to_string()}}});
            maps.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            anyhow::Ok(())
        }
    })
    .await?;
    maps.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    Ok(row)
}

/// The bench-only resources whose status the second floor patches, kept for the whole run so
/// that single rounds of the floor can be paired with the claim bursts.
pub struct StatusFloor {
    crds: Api<CustomResourceDefinition>,
    objects: Api<DynamicObject>,
    names: Vec<String>,
    /// Rounds patched so far (each patch writes a new round, so none is a no-op).
    rounds: std::sync::atomic::AtomicUsize,
}

impl StatusFloor {
    /// Creates the resource definition and `n` objects of it in `namespace`.
    pub async fn prepare(client: &Client, namespace: &str, n: usize) -> anyhow::Result<Self> {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        if crds.get_opt(FLOOR_CRD).await?.is_none() {
            crds.create(
                &PostParams::default(),
                &serde_json::from_value(floor_crd())?,
            )
            .await?;
        }
        sco_e2e::poll::until(
            "the write-floor resource established",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                crds.get_opt(FLOOR_CRD)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|c| {
                        c.status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
        )
        .await?;
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("bench.sparkconnect.dev", "v1", "WriteFloor"),
            "writefloors",
        );
        let objects: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &resource);
        let names = names(n);
        for name in &names {
            let object: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "bench.sparkconnect.dev/v1", "kind": "WriteFloor",
                "metadata": {"name": name}, "spec": {}
            }))?;
            objects.create(&PostParams::default(), &object).await?;
        }
        Ok(Self {
            crds,
            objects,
            names,
            rounds: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Patches the status of object `name` to a new round.
    async fn patch(&self, name: String) -> anyhow::Result<()> {
        let round = self
            .rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let patch = serde_json::json!({"status": {
            "round": round, "phase": "Bound", "at": jiff::Timestamp::now().to_string(),
            "message": format!("round {round} of {name}")
        }});
        self.objects
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// One round: every object's status patched at once; each patch's latency.
    pub async fn round(&self) -> anyhow::Result<Vec<Duration>> {
        let (samples, _) = one_round(&self.names, |name| self.patch(name)).await?;
        Ok(samples)
    }

    /// Deletes the resource definition and with it every object of it.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.crds
            .delete(FLOOR_CRD, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// `rounds` rounds of parallel merge patches of a custom resource's status (`status.round`
/// and a timestamp, about the size of a claim's Bound status change).
pub async fn custom_status(
    floor: &StatusFloor,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    measure(
        "apiserver_status_write_floor",
        "status patches of a custom resource",
        &floor.names,
        rounds,
        |name, _| floor.patch(name),
    )
    .await
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("floor-{i:03}")).collect()
}

/// Runs `write` for every name at once, `rounds` times after one unmeasured round; the row
/// has the medians of the rounds' p50/p99, their spread, writes per second and the
/// apiserver's CPU per write.
async fn measure<F, Fut>(
    scenario: &str,
    what: &str,
    names: &[String],
    rounds: usize,
    write: F,
) -> anyhow::Result<serde_json::Value>
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let n = names.len();
    let mut per_round = Vec::new();
    let mut all = Vec::new();
    let mut cpu_before = cpu::by_process();
    for round in 0..=rounds {
        if round == 1 {
            cpu_before = cpu::by_process();
        }
        let (samples, wall) = one_round(names, |name| write(name, round)).await?;
        if round == 0 {
            continue; // warms the connections
        }
        per_round.push((samples.clone(), wall));
        all.extend(samples);
    }
    let apiserver_cpu_ms_per_write = cpu::spent(&cpu_before, &cpu::by_process())
        .into_iter()
        .find(|(process, _)| process == "kube-apiserver")
        .map_or(f64::NAN, |(_, s)| s * 1000.0 / (n * rounds) as f64);
    let rates: Vec<f64> = per_round
        .iter()
        .map(|(_, wall)| n as f64 / wall.as_secs_f64())
        .collect();
    let (p50s, p99s) = spread(&per_round.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    println!(
        "write floor: {n} parallel {what}, p50 {:.1} ms, p99 {:.1} ms, {:.0} writes/s (median of {rounds} rounds), apiserver CPU {apiserver_cpu_ms_per_write:.2} ms per write",
        p50s.median,
        p99s.median,
        median(&rates)
    );
    Ok(serde_json::json!({
        "scenario": scenario, "concurrency": n, "rounds": rounds, "samples": all.len(),
        "p50_ms": p50s.median, "p99_ms": p99s.median,
        "p50_ms_spread": [p50s.min, p50s.max], "p99_ms_spread": [p99s.min, p99s.max],
        "writes_per_second": median(&rates),
        "apiserver_cpu_ms_per_write": apiserver_cpu_ms_per_write,
        "p50_ms_all": report::percentile(&all, 0.5), "p99_ms_all": report::percentile(&all, 0.99),
    }))
}

/// Runs `write` for every name at once; each write's latency and the round's wall time.
async fn one_round<F, Fut>(names: &[String], write: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let writes = names.iter().map(|name| {
        let write = write(name.clone());
        async move {
            let t = Instant::now();
            write.await?;
            anyhow::Ok(t.elapsed())
        }
    });
    let samples = futures::future::try_join_all(writes).await?;
    Ok((samples, started.elapsed()))
}

/// A namespaced resource with a status subresource and an open schema.
fn floor_crd() -> serde_json::Value {
    let open = serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": FLOOR_CRD},
        "spec": {
            "group": "bench.sparkconnect.dev", "scope": "Namespaced",
            "names": {"plural": "writefloors", "singular": "writefloor", "kind": "WriteFloor"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": open, "status": open}}}
            }]
        }
    })
}
