//! The watches: one shared reflector store per kind the operator reads, filled by a watch
//! scoped with label selectors, read by reconciles instead of LIST calls, and subscribed to by
//! the controllers as their triggers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::builders::labels::{CLUSTER_LABEL, FIELD_MANAGER};
use crate::crd::{SparkConnectClaim, SparkConnectCluster};

/// Events buffered per subscriber before the watch waits for it.
const BUFFER: usize = 1024;
/// Selects everything the operator creates.
const MANAGED: &str = "app.kubernetes.io/managed-by=spark-connect-operator";

/// Read-only views of everything watched.
#[derive(Clone)]
pub struct Stores {
    /// Clusters.
    pub clusters: Store<SparkConnectCluster>,
    /// Claims.
    pub claims: Store<SparkConnectClaim>,
    /// Pods carrying a cluster label (the operator's servers, and any that copy their labels).
    pub pods: Store<Pod>,
    /// The operator's Services.
    pub services: Store<Service>,
    /// The operator's EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// The operator's ServiceAccounts.
    pub accounts: Store<ServiceAccount>,
    /// The operator's Roles.
    pub roles: Store<Role>,
    /// The operator's RoleBindings.
    pub bindings: Store<RoleBinding>,
    healthy: Arc<BTreeMap<&'static str, AtomicBool>>,
    synced: Arc<AtomicBool>,
}

/// Trigger streams for the controllers (each a subscription to a store's watch).
pub struct Triggers {
    /// For the cluster controller.
    pub clusters: ReflectHandle<SparkConnectCluster>,
    /// For the cluster controller (claims map to their cluster).
    pub claims_for_clusters: ReflectHandle<SparkConnectClaim>,
    /// For the claim controller.
    pub claims: ReflectHandle<SparkConnectClaim>,
    /// Owned children, for the cluster controller.
    pub pods: ReflectHandle<Pod>,
    /// Owned children, for the cluster controller.
    pub services: ReflectHandle<Service>,
    /// Owned children, for the cluster controller.
    pub slices: ReflectHandle<EndpointSlice>,
    /// Owned children, for the cluster controller.
    pub accounts: ReflectHandle<ServiceAccount>,
    /// Owned children, for the cluster controller.
    pub roles: ReflectHandle<Role>,
    /// Owned children, for the cluster controller.
    pub bindings: ReflectHandle<RoleBinding>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watch feeding one store; the returned future drives it and records its health.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    subscribers: usize,
    health: (&'static str, Arc<BTreeMap<&'static str, AtomicBool>>),
) -> (Store<K>, Vec<ReflectHandle<K>>, BoxFuture<'static, ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store_shared(BUFFER);
    let handles = (0..subscribers)
        .filter_map(|_| writer.subscribe())
        .collect();
    let (kind, healthy) = health;
    let driver = watcher(api, config)
        .default_backoff()
        .reflect_shared(writer)
        .for_each(move |event| {
            let ok = event.is_ok();
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "watch failed; retrying");
            }
            if let Some(flag) = healthy.get(kind) {
                flag.store(ok, Ordering::Relaxed);
            }
            futures::future::ready(())
        })
        .boxed();
    (reader, handles, driver)
}

/// Starts nothing yet: returns the stores, the controllers' triggers and the stream that runs
/// every watch (poll it to completion).
pub fn build(
    client: &Client,
    namespace: Option<&str>,
) -> Option<(Stores, Triggers, impl Stream<Item = ()> + Send + use<>)> {
    let kinds = [
        "clusters", "claims", "pods", "services", "slices", "accounts", "roles", "bindings",
    ];
    let healthy: Arc<BTreeMap<&'static str, AtomicBool>> =
        Arc::new(kinds.iter().map(|k| (*k, AtomicBool::new(true))).collect());
    let h = |kind: &'static str| (kind, healthy.clone());
    let all = watcher::Config::default;
    let managed = || watcher::Config::default().labels(MANAGED);
    let (clusters, mut cluster_subs, w1) = watch(api(client, namespace), all(), 1, h("clusters"));
    let (claims, mut claim_subs, w2) = watch(api(client, namespace), all(), 2, h("claims"));
    let (pods, mut pod_subs, w3) = watch(
        api(client, namespace),
        watcher::Config::default().labels(&format!(
            "{CLUSTER_LABEL},app.kubernetes.io/component=server"
        )),
        1,
        h("pods"),
    );
    let (services, mut service_subs, w4) =
        watch(api(client, namespace), managed(), 1, h("services"));
    let (slices, mut slice_subs, w5) = watch(
        api(client, namespace),
        watcher::Config::default().labels(&format!(
            "{}={FIELD_MANAGER}",
            crate::builders::service::SLICE_MANAGER_LABEL
        )),
        1,
        h("slices"),
    );
    let (accounts, mut account_subs, w6) =
        watch(api(client, namespace), managed(), 1, h("accounts"));
    let (roles, mut role_subs, w7) = watch(api(client, namespace), managed(), 1, h("roles"));
    let (bindings, mut binding_subs, w8) =
        watch(api(client, namespace), managed(), 1, h("bindings"));
    let stores = Stores {
        clusters,
        claims,
        pods,
        services,
        slices,
        accounts,
        roles,
        bindings,
        healthy,
        synced: Arc::default(),
    };
    let triggers = Triggers {
        clusters: cluster_subs.pop()?,
        claims_for_clusters: claim_subs.pop()?,
        claims: claim_subs.pop()?,
        pods: pod_subs.pop()?,
        services: service_subs.pop()?,
        slices: slice_subs.pop()?,
        accounts: account_subs.pop()?,
        roles: role_subs.pop()?,
        bindings: binding_subs.pop()?,
    };
    let waiting = stores.clone();
    let synced = async move {
        if waiting.ready().await {
            waiting.synced.store(true, Ordering::Relaxed);
            tracing::info!("watches synced");
        }
    }
    .boxed();
    let drivers = futures::stream::select_all(
        [w1, w2, w3, w4, w5, w6, w7, w8, synced].map(|w| w.into_stream()),
    );
    Some((stores, triggers, drivers))
}

impl Stores {
    /// Waits until every store holds its first full list.
    async fn ready(&self) -> bool {
        self.clusters.wait_until_ready().await.is_ok()
            && self.claims.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && self.slices.wait_until_ready().await.is_ok()
            && self.accounts.wait_until_ready().await.is_ok()
            && self.roles.wait_until_ready().await.is_ok()
            && self.bindings.wait_until_ready().await.is_ok()
    }

    /// Whether every store holds its first full list.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The kinds whose watch failed on its last attempt.
    pub fn failing_watches(&self) -> Vec<&'static str> {
        self.healthy
            .iter()
            .filter(|(_, ok)| !ok.load(Ordering::Relaxed))
            .map(|(kind, _)| *kind)
            .collect()
    }
}
