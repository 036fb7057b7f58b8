//! What the world binary, the e2e tests and the benchmarks share: the world's addresses, a
//! client for a running world, and one poll loop.

pub mod net;
pub mod poll;

use std::path::Path;

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
