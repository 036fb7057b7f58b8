//! The controllers and what they share.

pub mod apply;
pub mod autoscale;
pub mod backoff;
pub mod binding;
pub mod claim;
pub mod claim_plan;
pub mod cluster;
pub mod conditions;
pub mod plan;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::reflector::ObjectRef;

use crate::builders::labels::FIELD_MANAGER;
use crate::crd::{SparkConnectClaim, SparkConnectCluster};
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
    /// Demand-driven idle targets.
    pub autoscaler: autoscale::Autoscaler,
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
            autoscaler: autoscale::Autoscaler::default(),
        }
    }
}

/// An API of `K` in one namespace, or in all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
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
    let ns = namespace.as_deref();
    let (clusters, claims) = (
        scoped::<SparkConnectCluster>(&ctx.client, ns),
        scoped::<SparkConnectClaim>(&ctx.client, ns),
    );
    let (pods, services) = (
        scoped::<Pod>(&ctx.client, ns),
        scoped::<Service>(&ctx.client, ns),
    );
    let children =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=spark-connect-operator");
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let clusters_done = Controller::new(clusters, watcher::Config::default())
        .owns(pods, children.clone())
        .owns(services, children)
        .watches(claims.clone(), watcher::Config::default(), |claim| {
            binding::cluster_of(&claim)
        })
        .reconcile_on(probed)
        .graceful_shutdown_on(shutdown.clone())
        .run(cluster::reconcile, cluster::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "cluster reconcile ended with an error");
            }
        });
    let claims_done = Controller::new(claims, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(claim::reconcile, claim::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "claim reconcile ended with an error");
            }
        });
    futures::join!(clusters_done, claims_done);
}

impl Context {
    /// Publishes an Event on `object`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing event failed");
        }
    }
}
