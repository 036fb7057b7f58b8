//! The watches: one reflector store per kind the operator reads, filled by a watch scoped with
//! label selectors and read by reconciles instead of LIST calls. Each watch is driven by the one
//! controller it triggers. (kube-runtime's shared-stream subscribers are not used: in 5.0 a
//! subscriber whose object left the store before it was polled returns Pending without a
//! waker and stalls for good.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::builders::bind_ledger::{LedgerView, is_ledger_of, ledger_name};
use crate::builders::labels::{CLUSTER_LABEL, FIELD_MANAGER};
use crate::crd::{SparkConnectClaim, SparkConnectCluster};
use crate::store_index::{ClusterOf, Indexed, claimed, indexed, labelled};

/// Selects everything the operator creates.
const MANAGED: &str = "app.kubernetes.io/managed-by=spark-connect-operator";

/// Read-only views of everything watched.
#[derive(Clone)]
pub struct Stores {
    /// Clusters.
    pub clusters: Store<SparkConnectCluster>,
    /// Claims, by the cluster each names.
    pub claims: Indexed<SparkConnectClaim>,
    /// Pods carrying a cluster label (the operator's servers, and any that copy their labels),
    /// by that label.
    pub pods: Indexed<Pod>,
    /// The operator's Services, by cluster label.
    pub services: Indexed<Service>,
    /// The operator's EndpointSlices, by cluster label.
    pub slices: Indexed<EndpointSlice>,
    /// The operator's ServiceAccounts.
    pub accounts: Store<ServiceAccount>,
    /// The operator's Roles.
    pub roles: Store<Role>,
    /// The operator's RoleBindings.
    pub bindings: Store<RoleBinding>,
    /// Bind ledgers (one per cluster: who holds each taken server), by cluster label.
    pub ledgers: Indexed<ConfigMap>,
    /// Each ledger parsed, for the version of it last read.
    ledger_views: Arc<Mutex<HashMap<String, ParsedLedger>>>,
    health: Arc<BTreeMap<&'static str, WatchHealth>>,
}

/// A ledger's view and the version of the ledger it was parsed from.
struct ParsedLedger {
    uid: String,
    resource_version: String,
    view: Arc<LedgerView>,
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
    /// Owned children (bind ledgers), for the cluster controller.
    pub ledgers: Trigger<ConfigMap>,
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

/// What a watched kind is.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch's kind and where its health is recorded.
type HealthOf = (&'static str, Arc<BTreeMap<&'static str, WatchHealth>>);

/// One watch feeding one store through `apply`, recording its health, as a trigger stream.
fn watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    health: HealthOf,
    mut apply: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Trigger<K> {
    let (kind, health) = health;
    // The stores never read managedFields: dropping them halves what each object costs.
    watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None)
        .inspect(move |event| {
            if let Ok(event) = event {
                apply(event);
            }
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
        .boxed()
}

/// A watch into a plain store (read by name only).
fn plain<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    health: HealthOf,
) -> (Store<K>, Trigger<K>) {
    let (reader, mut writer) = reflector::store();
    let trigger = watch(api, config, health, move |e| writer.apply_watcher_event(e));
    (reader, trigger)
}

/// A watch into a store indexed by the cluster each object names.
fn by_cluster<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    health: HealthOf,
    cluster_of: ClusterOf<K>,
) -> (Indexed<K>, Trigger<K>) {
    let (reader, mut writer) = indexed(cluster_of);
    let trigger = watch(api, config, health, move |e| writer.apply_watcher_event(e));
    (reader, trigger)
}

/// The stores and the controllers' triggers (nothing runs until the triggers are polled).
pub fn build(client: &Client, namespace: Option<&str>) -> (Stores, Triggers) {
    let kinds = [
        "clusters", "claims", "pods", "services", "slices", "accounts", "roles", "bindings",
        "ledgers",
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
    let bind_ledgers = watcher::Config::default().labels(&format!(
        "{CLUSTER_LABEL},app.kubernetes.io/component={}",
        crate::builders::bind_ledger::BIND_COMPONENT
    ));
    let (clusters, t_clusters) = plain(api(client, namespace), all(), h("clusters"));
    let (claims, t_claims) = by_cluster(api(client, namespace), all(), h("claims"), claimed);
    let (pods, t_pods) = by_cluster(api(client, namespace), servers, h("pods"), labelled);
    let (services, t_services) =
        by_cluster(api(client, namespace), managed(), h("services"), labelled);
    let (slices, t_slices) = by_cluster(
        api(client, namespace),
        slices_of_ours,
        h("slices"),
        labelled,
    );
    let (accounts, t_accounts) = plain(api(client, namespace), managed(), h("accounts"));
    let (roles, t_roles) = plain(api(client, namespace), managed(), h("roles"));
    let (bindings, t_bindings) = plain(api(client, namespace), managed(), h("bindings"));
    let (ledgers, t_ledgers) =
        by_cluster(api(client, namespace), bind_ledgers, h("ledgers"), labelled);
    let stores = Stores {
        clusters,
        claims,
        pods,
        services,
        slices,
        accounts,
        roles,
        bindings,
        ledgers,
        ledger_views: Arc::default(),
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
        ledgers: t_ledgers,
    };
    (stores, triggers)
}

impl Stores {
    /// Cluster `cluster`'s (uid `cluster_uid`) own bind ledger, if the store shows one: a
    /// ConfigMap of the ledger's name that the cluster does not control is not it.
    pub fn ledger_of(
        &self,
        namespace: &str,
        cluster: &str,
        cluster_uid: &str,
    ) -> Option<Arc<ConfigMap>> {
        self.ledgers
            .get(&ObjectRef::new(&ledger_name(cluster)).within(namespace))
            .filter(|l| is_ledger_of(l, cluster_uid))
    }

    /// What cluster `cluster`'s own bind ledger says, parsed once per version of the ledger
    /// the store shows (a burst of claims each reads it; parsing every entry for each costs the
    /// square of the burst). Empty when the store shows no ledger of the cluster's.
    pub fn ledger_view(
        &self,
        namespace: &str,
        cluster: &str,
        cluster_uid: &str,
    ) -> Arc<LedgerView> {
        let key = format!("{namespace}/{cluster}");
        let Some(ledger) = self.ledger_of(namespace, cluster, cluster_uid) else {
            if let Ok(mut views) = self.ledger_views.lock() {
                views.remove(&key);
            }
            return Arc::default();
        };
        let version = (
            ledger.metadata.uid.as_deref().unwrap_or_default(),
            ledger
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default(),
        );
        let Ok(mut views) = self.ledger_views.lock() else {
            return Arc::new(LedgerView::of(&ledger));
        };
        if let Some(parsed) = views.get(&key)
            && (parsed.uid.as_str(), parsed.resource_version.as_str()) == version
            && !version.1.is_empty()
        {
            return parsed.view.clone();
        }
        let view = Arc::new(LedgerView::of(&ledger));
        let parsed = ParsedLedger {
            uid: version.0.to_string(),
            resource_version: version.1.to_string(),
            view: view.clone(),
        };
        views.insert(key, parsed);
        view
    }

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
    /// Bind ledgers.
    pub ledgers: Vec<ConfigMap>,
}

#[cfg(test)]
impl Stores {
    /// Stores holding exactly these objects, every watch counted as synced (for unit tests of
    /// the steps that read them).
    pub fn holding(held: Held) -> Self {
        fn events<K: Clone>(objects: Vec<K>) -> Vec<watcher::Event<K>> {
            std::iter::once(watcher::Event::Init)
                .chain(objects.into_iter().map(watcher::Event::InitApply))
                .chain(std::iter::once(watcher::Event::InitDone))
                .collect()
        }
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            for event in events(objects) {
                writer.apply_watcher_event(&event);
            }
            reader
        }
        fn filed<K>(objects: Vec<K>, cluster_of: ClusterOf<K>) -> Indexed<K>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = indexed(cluster_of);
            for event in events(objects) {
                writer.apply_watcher_event(&event);
            }
            reader
        }
        let kinds = [
            "clusters", "claims", "pods", "services", "slices", "accounts", "roles", "bindings",
            "ledgers",
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
            claims: filed(held.claims, claimed),
            pods: filed(held.pods, labelled),
            services: filed(held.services, labelled),
            slices: filed(held.slices, labelled),
            accounts: filled(held.accounts),
            roles: filled(held.roles),
            bindings: filled(held.bindings),
            ledgers: filed(held.ledgers, labelled),
            ledger_views: Arc::default(),
            health: Arc::new(health),
        }
    }
}
