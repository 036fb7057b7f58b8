//! The controllers and what they share. Reading order: `stores` (what the watches see),
//! `cluster` (one cluster's reconcile: observe → decide → act → report), `pool` (the pure
//! decisions and the allocator), `bind` and `claim` (claims to servers), `guard` (deadlines,
//! panics, retry delays), `apply` (how objects are written).

pub mod applied;
pub mod apply;
pub mod bind;
pub mod claim;
pub mod claim_status;
pub mod cluster;
pub mod conditions;
pub mod context;
pub mod guard;
pub mod known_tokens;
pub mod ledger;
pub mod pool;
pub mod recorders;
pub mod stores;

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, controller};

use crate::crd::{SparkConnectClaim, SparkConnectCluster};
pub use context::Context;
use stores::{Stores, Triggers};

/// Cluster reconciles in flight at once. Each is a handful of requests to the apiserver; with
/// no bound, an operator starting beside a thousand clusters ran a thousand at once and held
/// the memory of all of them. Claims are not bounded: each joins its line at once.
const CLUSTER_RECONCILES: u16 = 16;

/// Runs the cluster and claim controllers until `shutdown` resolves; `probed` carries clusters
/// whose servers changed health.
pub async fn run(
    ctx: Arc<Context>,
    triggers: Triggers,
    probed: UnboundedReceiver<ObjectRef<SparkConnectCluster>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let Stores {
        clusters, claims, ..
    } = ctx.stores.clone();
    // Claims drive the claim controller; each also asks its cluster to look again.
    let (claimed, claimed_clusters) = futures::channel::mpsc::unbounded();
    let claim_triggers = triggers.claims.inspect(move |claim| {
        if let Ok(claim) = claim
            && let Some(cluster) = cluster_of(claim)
        {
            let _ = claimed.unbounded_send(cluster);
        }
    });
    let clusters_done = Controller::for_stream(triggers.clusters, clusters)
        .with_config(controller::Config::default().concurrency(CLUSTER_RECONCILES))
        // Pods map to their cluster by label, so a pod that only copies the labels is noticed.
        .watches_stream(triggers.pods, |pod| cluster_of_labelled(&pod.metadata))
        .owns_stream(triggers.services)
        .owns_stream(triggers.slices)
        .owns_stream(triggers.accounts)
        .owns_stream(triggers.roles)
        .owns_stream(triggers.bindings)
        .owns_stream(triggers.ledgers)
        .reconcile_on(futures::stream::select(probed, claimed_clusters))
        .graceful_shutdown_on(shutdown.clone())
        .run(cluster::reconcile, cluster::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "cluster reconcile ended with an error");
            }
        });
    let claims_done = Controller::for_stream(claim_triggers, claims.store().clone())
        .graceful_shutdown_on(shutdown)
        .run(claim::reconcile, claim::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "claim reconcile ended with an error");
            }
        });
    futures::join!(clusters_done, claims_done);
}

/// The cluster an object's label names (for the watch mapping).
fn cluster_of_labelled(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectRef<SparkConnectCluster>> {
    let ns = meta.namespace.as_deref()?;
    let cluster = meta
        .labels
        .as_ref()?
        .get(crate::builders::labels::CLUSTER_LABEL)?;
    Some(ObjectRef::new(cluster).within(ns))
}

/// The cluster a claim names (for the watch mapping).
pub fn cluster_of(claim: &SparkConnectClaim) -> Option<ObjectRef<SparkConnectCluster>> {
    let ns = claim.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(&claim.spec.cluster).within(ns))
}
