//! What the world binary, the e2e tests and the benchmarks share: the world's addresses, a
//! client for a running world, and one poll loop.

pub mod certs;
pub mod gateway;
pub mod net;
pub mod operator;
pub mod poll;

use std::path::Path;
use std::process::Output;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use spark_connect_operator::crd::{SparkConnectCluster, SparkConnectClusterStatus};

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| anyhow::anyhow!("running openssl: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// The client configuration of the running world whose state directory is `state` (the admin
/// certificate, through the host relay).
pub async fn world_config(state: &Path) -> anyhow::Result<Config> {
    let kubeconfig = Kubeconfig::read_from(state.join("kubeconfig"))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A client of the running world whose state directory is `state`.
pub async fn world_client(state: &Path) -> anyhow::Result<Client> {
    Ok(Client::try_from(world_config(state).await?)?)
}

/// Label on the namespaces that benchmark runs make, naming the bench: how a run finds what an
/// interrupted earlier run left behind.
const RUN_OF_LABEL: &str = "sco-e2e/run-of";

/// Makes a namespace of its own for one run of bench `base`, named `base-<unix seconds, hex>`,
/// after removing every namespace earlier runs of `base` left. A new name, not the old one made
/// anew: for 30 s after a namespace is deleted the apiserver looks a namespace of that name up
/// again on every write in it (its NamespaceLifecycle admission asks its own API once more), an
/// extra request that would be measured with every write of the run.
pub async fn fresh_namespace(client: &Client, base: &str) -> anyhow::Result<String> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let selector = format!("{RUN_OF_LABEL}={base}");
    let left = namespaces
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await?;
    for old in left.items.iter().filter_map(|n| n.metadata.name.as_deref()) {
        remove_namespace(client, old).await?;
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let name = format!("{base}-{seconds:x}");
    let namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {RUN_OF_LABEL: base}}
    }))?;
    namespaces
        .create(&kube::api::PostParams::default(), &namespace)
        .await?;
    Ok(name)
}

/// Deletes namespace `name` (if it exists) and waits until it is gone, with everything in it.
pub async fn remove_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_none() {
        return Ok(());
    }
    namespaces
        .delete(name, &kube::api::DeleteParams::default())
        .await?;
    poll::until(
        &format!("namespace {name} gone"),
        std::time::Duration::from_secs(600),
        std::time::Duration::from_millis(500),
        || async { namespaces.get_opt(name).await.ok().flatten().is_none() },
    )
    .await
    .map(drop)
}

/// Polls cluster `name` until its status satisfies `check` (`what` names the wait).
pub async fn cluster_status_until(
    clusters: &kube::Api<SparkConnectCluster>,
    name: &str,
    what: &str,
    timeout: std::time::Duration,
    check: impl Fn(&SparkConnectClusterStatus) -> bool,
) -> anyhow::Result<()> {
    poll::until(
        what,
        timeout,
        std::time::Duration::from_millis(200),
        || async {
            clusters
                .get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| check(&s))
        },
    )
    .await?;
    Ok(())
}

/// Runs a command to completion, failing with its output.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `command` inside the world at `state` with the `sco-world` binary `world_bin`.
pub fn exec(world_bin: &Path, state: &Path, command: &[&str]) -> std::io::Result<Output> {
    std::process::Command::new(world_bin)
        .arg("--state")
        .arg(state)
        .arg("exec")
        .arg("--")
        .args(command)
        .output()
}

/// The process id (inside the world) of a pod's main process, as the node agent recorded it.
pub fn pod_pid(state: &Path, ns: &str, pod: &str) -> Option<String> {
    let pid = std::fs::read_to_string(state.join(format!("pods/{ns}_{pod}/pid"))).ok()?;
    Some(pid.trim().to_string()).filter(|p| !p.is_empty())
}
