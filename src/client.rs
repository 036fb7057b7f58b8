//! Building the Kubernetes client.

use std::path::Path;

use http::Method;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, client::ClientBuilder};
use prometheus::IntCounterVec;
use tower::util::MapRequestLayer;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither a kubeconfig nor in-cluster configuration was found.
    #[error("finding Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building client: {0}")]
    Build(#[from] kube::Error),
}

/// A client from `kubeconfig` (or the environment: `KUBECONFIG`, in-cluster) that counts each
/// write request it sends in `writes`, by verb.
pub async fn build(
    kubeconfig: Option<&Path>,
    writes: IntCounterVec,
) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(
                Kubeconfig::read_from(path)?,
                &KubeConfigOptions::default(),
            )
            .await?
        }
        None => Config::infer().await?,
    };
    let count_writes = MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        if !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) {
            writes.with_label_values(&[request.method().as_str()]).inc();
        }
        request
    });
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&count_writes)
        .build())
}
