//! The watches: one reflector store per kind the operator reads, filled by a watch scoped with
//! label selectors and read by reconciles instead of LIST calls. Each watch is driven by the one
//! controller it triggers. (kube-runtime's shared-stream subscribers are not used: in 5.0 a
//! subscriber whose object left the store before it was polled returns Pending without a
//! waker and stalls for good.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::builders::labels::{CLUSTER_LABEL, FIELD_MANAGER};
use crate::crd::{SparkConnectClaim, SparkConnectCluster};

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
    /// Bind Leases (each hands one server to a claim, or to its cluster).
    pub leases: Store<Lease>,
    health: Arc<BTreeMap<&'static str, WatchHealth>>,
}

/// What one watch has done so far.
#[derive(Default)]
struct WatchHealth {
    /// It has delivered its first full list.
    synced: AtomicBool,
    /// Its last attempt failed.
    failing: AtomicBool,
}

/// A watch's objects as they change (applied or deleted), driving its store as it is polled.
pub type Trigger<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// Trigger streams for the controllers: polling them runs the watches.
pub struct Triggers {
    /// For the cluster controller.
    pub clusters: Trigger<SparkConnectCluster>,
    /// For the claim controller (which forwards each claim's cluster to the cluster controller).
    pub claims: Trigger<SparkConnectClaim>,
    /// For the cluster controller (pods map to their cluster by label).
    pub pods: Trigger<Pod>,
    /// Owned children, for the cluster controller.
    pub services: Trigger<Service>,
    /// Owned children, for the cluster controller.
    pub slices: Trigger<EndpointSlice>,
    /// Owned children, for the cluster controller.
    pub accounts: Trigger<ServiceAccount>,
    /// Owned children, for the cluster controller.
    pub roles: Trigger<Role>,
    /// Owned children, for the cluster controller.
    pub bindings: Trigger<RoleBinding>,
    /// For the cluster controller (bind Leases map to their cluster by label).
    pub leases: Trigger<Lease>,
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

/// One watch feeding one store, recording its health, as a trigger stream.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    health: (&'static str, Arc<BTreeMap<&'static str, WatchHealth>>),
) -> (Store<K>, Trigger<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let (kind, health) = health;
    // The stores never read managedFields: dropping them halves what each object costs.
    let objects = watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None);
    let stream = reflector(writer, objects)
        .inspect(move |event| {
            let Some(state) = health.get(kind) else {
                return;
            };
            match event {
                Ok(watcher::Event::InitDone) => {
                    if !state.synced.swap(true, Ordering::Relaxed) {
                        tracing::info!(kind, "watch synced");
                    }
                    state.failing.store(false, Ordering::Relaxed);
                }
                Ok(_) => state.failing.store(false, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch failed; retrying");
                    state.failing.store(true, Ordering::Relaxed);
                }
            }
        })
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// The stores and the controllers' triggers (nothing runs until the triggers are polled).
pub fn build(client: &Client, namespace: Option<&str>) -> (Stores, Triggers) {
    let kinds = [
        "clusters", "claims", "pods", "services", "slices", "accounts", "roles", "bindings",
        "leases",
    ];
    let health: Arc<BTreeMap<&'static str, WatchHealth>> =
        Arc::new(kinds.iter().map(|k| (*k, WatchHealth::default())).collect());
    let h = |kind: &'static str| (kind, health.clone());
    let all = watcher::Config::default;
    let managed = || watcher::Config::default().labels(MANAGED);
    let servers = watcher::Config::default().labels(&format!(
        "{CLUSTER_LABEL},app.kubernetes.io/component=server"
    ));
    let slices_of_ours = watcher::Config::default().labels(&format!(
        "{}={FIELD_MANAGER}",
        crate::builders::service::SLICE_MANAGER_LABEL
    ));
    let bind_leases = watcher::Config::default().labels(&format!(
        "{CLUSTER_LABEL},app.kubernetes.io/component={}",
        crate::builders::bind_lease::BIND_COMPONENT
    ));
    let (clusters, t_clusters) = watch(api(client, namespace), all(), h("clusters"));
    let (claims, t_claims) = watch(api(client, namespace), all(), h("claims"));
    let (pods, t_pods) = watch(api(client, namespace), servers, h("pods"));
    let (services, t_services) = watch(api(client, namespace), managed(), h("services"));
    let (slices, t_slices) = watch(api(client, namespace), slices_of_ours, h("slices"));
    let (accounts, t_accounts) = watch(api(client, namespace), managed(), h("accounts"));
    let (roles, t_roles) = watch(api(client, namespace), managed(), h("roles"));
    let (bindings, t_bindings) = watch(api(client, namespace), managed(), h("bindings"));
    let (leases, t_leases) = watch(api(client, namespace), bind_leases, h("leases"));
    let stores = Stores {
        clusters,
        claims,
        pods,
        services,
        slices,
        accounts,
        roles,
        bindings,
        leases,
        health,
    };
    let triggers = Triggers {
        clusters: t_clusters,
        claims: t_claims,
        pods: t_pods,
        services: t_services,
        slices: t_slices,
        accounts: t_accounts,
        roles: t_roles,
        bindings: t_bindings,
        leases: t_leases,
    };
    (stores, triggers)
}

impl Stores {
    /// The kinds whose watch has not delivered its first full list yet.
    pub fn unsynced_watches(&self) -> Vec<&'static str> {
        self.health
            .iter()
            .filter(|(_, h)| !h.synced.load(Ordering::Relaxed))
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// Whether every watch has delivered its first full list. Until then a store may miss
    /// objects that exist, and no decision may be taken from it.
    pub fn synced(&self) -> bool {
        self.health
            .values()
            .all(|h| h.synced.load(Ordering::Relaxed))
    }

    /// The kinds whose watch failed on its last attempt.
    pub fn failing_watches(&self) -> Vec<&'static str> {
        self.health
            .iter()
            .filter(|(_, h)| h.failing.load(Ordering::Relaxed))
            .map(|(kind, _)| *kind)
            .collect()
    }
}

/// Objects for [`Stores::holding`].
#[cfg(test)]
#[derive(Default)]
pub struct Held {
    /// Clusters.
    pub clusters: Vec<SparkConnectCluster>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Claims.
    pub claims: Vec<SparkConnectClaim>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// ServiceAccounts.
    pub accounts: Vec<ServiceAccount>,
    /// Roles.
    pub roles: Vec<Role>,
    /// RoleBindings.
    pub bindings: Vec<RoleBinding>,
    /// Bind Leases.
    pub leases: Vec<Lease>,
}

#[cfg(test)]
impl Stores {
    /// Stores holding exactly these objects, every watch counted as synced (for unit tests of
    /// the steps that read them).
    pub fn holding(held: Held) -> Self {
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(object));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            drop(writer);
            reader
        }
        let kinds = [
            "clusters", "claims", "pods", "services", "slices", "accounts", "roles", "bindings",
            "leases",
        ];
        let health = kinds
            .iter()
            .map(|k| {
                let h = WatchHealth::default();
                h.synced.store(true, Ordering::Relaxed);
                (*k, h)
            })
            .collect();
        Self {
            clusters: filled(held.clusters),
            claims: filled(held.claims),
            pods: filled(held.pods),
            services: filled(held.services),
            slices: filled(held.slices),
            accounts: filled(held.accounts),
            roles: filled(held.roles),
            bindings: filled(held.bindings),
            leases: filled(held.leases),
            health: Arc::new(health),
        }
    }
}
