//! The e2e harness: a handle on the running world (started by `e2e/run.sh`), helpers to wait
//! for conditions, and a report of the operator log, Events and pods when a test fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// The running world.
pub struct World {
    /// Its state directory.
    pub state: PathBuf,
    /// A client through the host relay.
    pub client: Client,
}

fn env_path(name: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(name).unwrap_or_else(|_| default.into()));
    if path.is_absolute() {
        path
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }
}

impl World {
    /// Connects to the world named by `SCO_WORLD` (default `target/world`).
    pub async fn connect() -> Self {
        let state = env_path("SCO_WORLD", "target/world");
        assert!(
            state.join("ready").exists(),
            "no running world at {}: run the e2e suite with `make test`",
            state.display()
        );
        let client = sco_e2e::world_client(&state)
            .await
            .expect("a client from the world's kubeconfig");
        Self { state, client }
    }

    /// The `sco-world` binary.
    pub fn world_bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_sco-world"))
    }

    /// The operator binary (for its `probe` command inside the world).
    pub fn operator_bin() -> PathBuf {
        env_path(
            "SCO_SPARK_CONNECT_OPERATOR_BIN",
            "target/debug/spark-connect-operator",
        )
    }

    /// Runs a command inside the world and returns its output.
    pub fn exec(&self, command: &[&str]) -> Output {
        sco_e2e::exec(&Self::world_bin(), &self.state, command).expect("running sco-world exec")
    }

    /// Runs a Python script inside the world with the pyspark venv.
    pub fn python(&self, script: &str) -> Output {
        let python = env_path("SCO_PYTHON", "target/none");
        self.exec(&[python.to_str().expect("utf-8 path"), "-c", script])
    }

    /// kubectl on the host against the world.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(env_path("SCO_KUBECTL", "kubectl"))
            .env("KUBECONFIG", self.state.join("kubeconfig"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("writing stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl output")
    }

    /// A fresh namespace for one test, with a report on failure.
    pub async fn namespace(&self, name: &str) -> TestNamespace {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_opt(name).await.expect("get namespace").is_some() {
            let _ = api.delete(name, &DeleteParams::default()).await;
            wait_until(Duration::from_secs(120), "old namespace to go", || async {
                api.get_opt(name).await.ok().flatten().is_none()
            })
            .await;
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // Pods need the namespace's default ServiceAccount.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), name);
        wait_until(
            Duration::from_secs(60),
            "default ServiceAccount",
            || async { accounts.get_opt("default").await.ok().flatten().is_some() },
        )
        .await;
        TestNamespace {
            name: name.into(),
            state: self.state.clone(),
            kubeconfig: self.state.join("kubeconfig"),
        }
    }

    /// The namespace the chart installed the operator into.
    pub fn operator_namespace() -> String {
        sco_e2e::operator::namespace()
    }

    /// The full identity (`<pod>_<process>`) holding the operator's leader Lease.
    pub async fn leader_identity(&self) -> Option<String> {
        sco_e2e::operator::leader_identity(&self.client).await
    }

    /// The pod holding the operator's leader Lease.
    pub async fn leader(&self) -> Option<String> {
        sco_e2e::operator::leader(&self.client).await
    }

    /// The leading operator's metrics, read inside the world from its pod.
    pub async fn metrics(&self) -> String {
        sco_e2e::operator::metrics(&self.client, &Self::world_bin(), &self.state).await
    }

    /// Sum of a metric's samples whose labels contain `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        sco_e2e::operator::metric_sum(&self.metrics().await, name, filter)
    }
}

/// A test's namespace; prints what happened in it when the test fails.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    state: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("==== failure report for namespace {} ====", self.name);
        let kubectl = env_path("SCO_KUBECTL", "kubectl");
        for args in [
            vec![
                "get",
                "sparkconnectclusters,sparkconnectclaims,pods,services",
                "-o",
                "wide",
                "--show-labels",
            ],
            vec!["get", "events", "--sort-by=.lastTimestamp"],
        ] {
            if let Ok(out) = Command::new(&kubectl)
                .env("KUBECONFIG", &self.kubeconfig)
                .args(&args)
                .args(["-n", &self.name])
                .output()
            {
                eprintln!(
                    "$ kubectl {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if let Ok(log) = std::fs::read_to_string(self.state.join("logs/operator.log")) {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- operator log (last 60 lines) ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.state.join("pods")) {
            for dir in dirs.flatten().filter(|d| {
                d.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}_", self.name))
            }) {
                if let Ok(log) = std::fs::read_to_string(dir.path().join("log")) {
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!(
                        "---- pod {} (last 15 lines) ----",
                        dir.file_name().to_string_lossy()
                    );
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// Creates cluster `name` with `spec` and waits until it has `idle` idle servers.
pub async fn create_pool(
    clusters: &Api<spark_connect_operator::crd::SparkConnectCluster>,
    name: &str,
    spec: serde_json::Value,
    idle: i32,
    timeout: Duration,
) {
    let what = format!("{idle} idle servers in {name}");
    create_cluster_until(clusters, name, spec, &what, timeout, |s| {
        s.servers.idle == idle
    })
    .await;
}

/// Creates cluster `name` with `spec` and waits (up to `timeout`) until a shared server serves.
pub async fn create_serving(
    clusters: &Api<spark_connect_operator::crd::SparkConnectCluster>,
    name: &str,
    spec: serde_json::Value,
    timeout: Duration,
) {
    let what = format!("a shared server in {name}");
    create_cluster_until(clusters, name, spec, &what, timeout, |s| {
        s.servers.shared >= 1
    })
    .await;
}

/// Creates cluster `name` with `spec` and waits (up to `timeout`) until its status shows
/// `what` (`until`).
pub async fn create_cluster_until(
    clusters: &Api<spark_connect_operator::crd::SparkConnectCluster>,
    name: &str,
    spec: serde_json::Value,
    what: &str,
    timeout: Duration,
    until: impl Fn(&spark_connect_operator::crd::SparkConnectClusterStatus) -> bool,
) {
    let cluster =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
            .expect("cluster");
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create cluster");
    if let Err(e) = sco_e2e::cluster_status_until(clusters, name, what, timeout, until).await {
        panic!("{e}");
    }
}

/// The spec of a pool of fake Connect servers (the project's light test server, not Spark).
pub fn fake_spec(idle: i32, max: i32, max_waiting: i32) -> serde_json::Value {
    serde_json::json!({
        "image": "sco-fake-connect:latest",
        "shared": 0,
        "hotPool": {"idle": idle, "max": max, "maxWaitingClaims": max_waiting},
        "probe": {"period": "2s", "timeout": "1s"}
    })
}

/// The claim `name`, once it is Bound (failing the test after a minute).
pub async fn bound(
    claims: &Api<spark_connect_operator::crd::SparkConnectClaim>,
    name: &str,
) -> spark_connect_operator::crd::SparkConnectClaim {
    use spark_connect_operator::crd::ClaimPhase;
    wait_until(
        Duration::from_secs(60),
        &format!("claim {name} Bound"),
        || async {
            claims
                .get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.phase == ClaimPhase::Bound)
        },
    )
    .await;
    claims.get(name).await.expect("claim")
}

/// Polls `check` until it holds, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    match sco_e2e::poll::until(what, timeout, Duration::from_millis(200), check).await {
        Ok(took) => took,
        Err(e) => panic!("{e}"),
    }
}

/// Whether pod `name` is gone or being deleted (a failed read says neither).
pub async fn pod_gone_or_leaving(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name)
        .await
        .is_ok_and(|p| p.is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
}

/// Pods in `ns` matching `selector`, not being deleted.
pub async fn live_pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect()
        })
        .unwrap_or_default()
}

/// A condition of a cluster, by type.
pub fn condition(
    cluster: &spark_connect_operator::crd::SparkConnectCluster,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// The operator's pods with their container restart counts (`name:restarts`, sorted): equal
/// before and after means no operator process restarted or was replaced.
pub async fn operator_restarts(world: &World) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &World::operator_namespace());
    let mut out: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or_default();
            format!("{}:{restarts}", p.metadata.name.unwrap_or_default())
        })
        .collect();
    out.sort();
    out
}

/// Whether the output of a command shows success; prints it otherwise.
pub fn succeeded(out: &Output) -> bool {
    if !out.status.success() {
        eprintln!(
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// What must hold for a pool after any fault: no server bound to two claims, every Bound claim
/// on a live server annotated with it, no Service or EndpointSlice without its server, the
/// prober probing exactly the live servers, and the pool back at its idle target. Waits up to
/// `timeout` for the eventual parts (pool size, prober) and fails the test otherwise.
pub async fn assert_pool_consistent(world: &World, ns: &str, cluster: &str, timeout: Duration) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
    let client = &world.client;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
    let claims: Api<SparkConnectClaim> = Api::namespaced(client.clone(), ns);
    let servers = format!("sparkconnect.dev/cluster={cluster},app.kubernetes.io/component=server");
    let idle_target = clusters
        .get(cluster)
        .await
        .map(|c| c.spec.hot_pool.idle)
        .unwrap_or_default();
    let last = std::sync::Mutex::new(String::new());
    wait_until(timeout, &format!("{ns}/{cluster} consistent"), || async {
        let live = live_pods(client, ns, &servers).await;
        let Ok(listed) = claims.list(&ListParams::default()).await else {
            return false;
        };
        let bound: Vec<(String, String)> = listed
            .items
            .iter()
            .filter(|c| c.spec.cluster == cluster)
            .filter_map(|c| {
                let s = c.status.as_ref()?;
                if s.phase != ClaimPhase::Bound {
                    return None;
                }
                Some((c.metadata.name.clone()?, s.server.clone()?))
            })
            .collect();
        let mut servers_used: Vec<&String> = bound.iter().map(|(_, s)| s).collect();
        servers_used.sort();
        servers_used.dedup();
        assert_eq!(servers_used.len(), bound.len(), "a server is bound to two claims: {bound:?}");
        let annotated = bound.iter().all(|(claim, server)| {
            live.iter().any(|p| {
                p.metadata.name.as_deref() == Some(server.as_str())
                    && p.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("sparkconnect.dev/claim"))
                        == Some(claim)
            })
        });
        let names: Vec<String> = live.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let all_pods: Vec<String> = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&servers))
            .await
            .map(|l| l.items.into_iter().filter_map(|p| p.metadata.name).collect())
            .unwrap_or_default();
        let per_server = servers.clone();
        let services: Vec<String> = Api::<Service>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&per_server))
            .await
            .map(|l| l.items.into_iter().filter_map(|s| s.metadata.name).collect())
            .unwrap_or_default();
        let slices: Vec<String> = Api::<EndpointSlice>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&per_server))
            .await
            .map(|l| l.items.into_iter().filter_map(|s| s.metadata.name).collect())
            .unwrap_or_default();
        let no_orphans = services.iter().chain(&slices).all(|s| all_pods.contains(s));
        let with_ip = live
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .count();
        let probed = world
            .metric(
                "spark_connect_operator_probe_targets",
                &format!("cluster=\"{cluster}\",namespace=\"{ns}\""),
            )
            .await;
        let idle = clusters
            .get(cluster)
            .await
            .ok()
            .and_then(|c| c.status)
            .map(|s| s.servers.idle)
            .unwrap_or_default();
        let ok = annotated && no_orphans && probed as usize == with_ip && idle >= idle_target;
        if !ok {
            let state = format!(
                "bound claims annotated {annotated}, no orphans {no_orphans} ({services:?} {slices:?} vs {names:?}), probed {probed} of {with_ip}, idle {idle} of {idle_target}"
            );
            // Printed when it changes, so a failure shows where the pool stopped converging.
            if last.lock().map(|mut l| std::mem::replace(&mut *l, state.clone()) != state).unwrap_or(false) {
                eprintln!("not yet: {state}");
            }
        }
        ok
    })
    .await;
}

/// The IP of pod `name` in `ns`.
pub async fn pod_ip(client: &Client, ns: &str, name: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()
        .and_then(|p| p.status?.pod_ip)
        .unwrap_or_default()
}

/// The process id (inside the world) of a pod's main process.
pub fn pod_pid(world: &World, ns: &str, pod: &str) -> String {
    sco_e2e::pod_pid(&world.state, ns, pod).unwrap_or_default()
}

/// The process id (inside the world) of a control-plane program, e.g. `kube-apiserver`.
pub fn world_pid(world: &World, program: &str) -> String {
    let out = world.exec(&["pgrep", "-o", "-x", program]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
