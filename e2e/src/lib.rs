//! What the world binary, the e2e tests and the benchmarks share: the world's addresses, a
//! client for a running world, and one poll loop.

pub mod net;
pub mod operator;
pub mod poll;

use std::path::Path;
use std::process::Output;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

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
