//! Watching one Secret by name: every version the apiserver shows is handed to a loader, and a
//! failing watch is logged and retried with backoff (what was loaded before stays in use).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// Hands each version of Secret `namespace/name` to `load`, until the process ends; `what`
/// names the Secret's purpose in log lines.
pub async fn each_version<F, Fut>(
    client: Client,
    namespace: &str,
    name: &str,
    what: &str,
    mut load: F,
) where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = ()>,
{
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(secret) => load(secret).await,
            Err(e) => tracing::warn!(
                secret = %format!("{namespace}/{name}"), error = %e,
                "watching the {what} Secret failed; retrying"
            ),
        }
    }
}
