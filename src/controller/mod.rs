//! The controllers and what they share.

pub mod apply;
pub mod backoff;
pub mod cluster;
pub mod conditions;
pub mod plan;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::reflector::ObjectRef;

use crate::builders::labels::FIELD_MANAGER;
use crate::crd::SparkConnectCluster;
use crate::metrics::Metrics;
use crate::probe::prober::Prober;

/// What every reconcile needs.
pub struct Context {
    /// The API client (counting its write requests).
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Probes every server; its health book is what "healthy" means.
    pub prober: Prober,
    /// Slows down replacing servers that fail to start.
    pub backoff: backoff::StartBackoff,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, metrics: Metrics, prober: Prober) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            prober,
            backoff: backoff::StartBackoff::default(),
        }
    }
}

/// Runs the cluster controller until `shutdown` resolves; `probed` carries clusters whose
/// servers changed health.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    probed: UnboundedReceiver<ObjectRef<SparkConnectCluster>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let api = |client: Client| -> (Api<SparkConnectCluster>, Api<Pod>, Api<Service>) {
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        }
    };
    let (clusters, pods, services) = api(client);
    let children =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=spark-connect-operator");
    Controller::new(clusters, watcher::Config::default())
        .owns(pods, children.clone())
        .owns(services, children)
        .reconcile_on(probed)
        .graceful_shutdown_on(shutdown)
        .run(cluster::reconcile, cluster::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile ended with an error");
            }
        })
        .await;
}
