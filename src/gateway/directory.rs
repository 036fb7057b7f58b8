//! What the gateway knows about the world, from watches: clusters, their server pods and the
//! gateway's own claims; and the servers' tokens, read from their Secrets on demand and cached.
//! Every replica watches the same objects, so every replica routes alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::arrivals::Arrivals;
use super::cache::TtlCache;
use super::route::ClusterRef;
use crate::builders::labels::{GATEWAY_USER_LABEL, ServerState, TOKEN_KEY};
use crate::crd::{SparkConnectClaim, SparkConnectCluster};
use crate::store_index::{Indexed, indexed, labelled};

/// Annotation with the full user name of a gateway claim.
pub const GATEWAY_USER_ANNOTATION: &str = "sparkconnect.dev/gateway-user";
/// Annotation with the time of the last call through any replica (RFC 3339).
pub const LAST_CALL_ANNOTATION: &str = "sparkconnect.dev/last-call";

/// Selects the operator's server pods.
const SERVER_PODS: &str =
    "app.kubernetes.io/managed-by=spark-connect-operator,app.kubernetes.io/component=server";

/// A server a call can be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Pod name.
    pub name: String,
    /// `ip:port` of its Connect port.
    pub address: String,
}

/// The watched world.
#[derive(Clone)]
pub struct Directory {
    client: Client,
    clusters: Store<SparkConnectCluster>,
    /// Server pods, by the cluster each serves.
    pods: Indexed<Pod>,
    claims: Store<SparkConnectClaim>,
    /// The order the claims watch first showed each claim in.
    arrivals: Arc<Mutex<Arrivals>>,
    claims_changed: Arc<Notify>,
    synced: Arc<AtomicUsize>,
    tokens: Arc<TtlCache<(String, String), String>>,
}

/// How long a server token read from its Secret is reused.
const TOKEN_FOR: Duration = Duration::from_secs(60);
/// How many watches must sync before the gateway is ready.
const WATCHES: usize = 3;

/// A watch feeding a plain store.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: Arc<AtomicUsize>,
    changed: Option<Arc<Notify>>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
{
    let (store, mut writer) = reflector::store();
    let apply = move |e: &watcher::Event<K>| writer.apply_watcher_event(e);
    let task = drive(api, config, store.clone(), apply, synced, changed);
    (store, task)
}

/// Runs a watch, applying its events with `apply`; counts it synced once `store` is ready.
fn drive<K>(
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
    mut apply: impl FnMut(&watcher::Event<K>) + Send + 'static,
    synced: Arc<AtomicUsize>,
    changed: Option<Arc<Notify>>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
{
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .inspect_ok(move |event| apply(event));
    tokio::spawn(async move {
        let ready = async {
            if store.wait_until_ready().await.is_ok() {
                synced.fetch_add(1, Ordering::AcqRel);
            }
        };
        let drive = stream.for_each(|event| {
            if let Err(e) = &event {
                tracing::warn!(error = %e, "a gateway watch failed; retrying");
            } else if let Some(changed) = &changed {
                changed.notify_waiters();
            }
            async {}
        });
        tokio::join!(ready, drive);
    })
}

impl Directory {
    /// Starts the watches (all namespaces, or one).
    pub fn start(
        client: Client,
        namespace: Option<&str>,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let synced = Arc::new(AtomicUsize::new(0));
        let claims_changed = Arc::new(Notify::new());
        let (clusters, a) = watch(
            api::<SparkConnectCluster>(&client, namespace),
            watcher::Config::default(),
            synced.clone(),
            None,
        );
        let (pods, mut filing) = indexed(labelled::<Pod>);
        let b = drive(
            api::<Pod>(&client, namespace),
            watcher::Config::default().labels(SERVER_PODS),
            pods.store().clone(),
            move |e| filing.apply_watcher_event(e),
            synced.clone(),
            None,
        );
        let (claims, mut claims_writer) = reflector::store();
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let noted = arrivals.clone();
        let c = drive(
            api::<SparkConnectClaim>(&client, namespace),
            watcher::Config::default().labels(GATEWAY_USER_LABEL),
            claims.clone(),
            move |e| {
                noted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply_around(e, || claims_writer.apply_watcher_event(e));
            },
            synced.clone(),
            Some(claims_changed.clone()),
        );
        let directory = Self {
            client,
            clusters,
            pods,
            claims,
            arrivals,
            claims_changed,
            synced,
            tokens: Arc::new(TtlCache::new(100_000)),
        };
        (directory, vec![a, b, c])
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= WATCHES
    }

    /// The client the directory uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A cluster.
    pub fn cluster(&self, cluster: &ClusterRef) -> Option<Arc<SparkConnectCluster>> {
        self.clusters
            .get(&ObjectRef::new(&cluster.name).within(&cluster.namespace))
    }

    fn address(pod: &Pod, port: i32) -> Option<String> {
        let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
        if ip.contains(':') {
            Some(format!("[{ip}]:{port}"))
        } else {
            Some(format!("{ip}:{port}"))
        }
    }

    /// The servers behind a cluster's shared endpoint, by name.
    pub fn shared_servers(&self, cluster: &ClusterRef, port: i32) -> Vec<Server> {
        let mut servers: Vec<Server> = self
            .pods
            .of_cluster(&cluster.namespace, &cluster.name)
            .iter()
            .filter(|pod| {
                // Without token auth the operator may hand a pool server to the endpoint: the
                // state says who serves the shared Service, whatever the role.
                ServerState::of(pod) == ServerState::Shared
                    && pod.metadata.deletion_timestamp.is_none()
            })
            .filter_map(|pod| {
                Some(Server {
                    name: pod.name_any(),
                    address: Self::address(pod, port)?,
                })
            })
            .collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        servers
    }

    /// A server pod by name, if it is alive and has an address.
    pub fn server(&self, namespace: &str, name: &str, port: i32) -> Option<Server> {
        let pod = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        Some(Server {
            name: name.into(),
            address: Self::address(&pod, port)?,
        })
    }

    /// A gateway claim.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<Arc<SparkConnectClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every gateway claim.
    pub fn claims(&self) -> Vec<Arc<SparkConnectClaim>> {
        self.claims.state()
    }

    /// Where a gateway claim stands in the order this replica's watch first showed the claims
    /// (the order they were created in); `None` for a claim the watch has not shown.
    pub fn arrival(&self, claim: &SparkConnectClaim) -> Option<u64> {
        let uid = claim.metadata.uid.as_deref()?;
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of(uid)
    }

    /// Resolves on the next change to any gateway claim. Create it before looking, then await.
    pub fn claims_changed(&self) -> Arc<Notify> {
        self.claims_changed.clone()
    }

    /// The token in Secret `namespace/name` (key `token`), cached for a minute.
    pub async fn token(&self, namespace: &str, name: &str) -> Result<String, String> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(token) = self.tokens.get(&key) {
            return Ok(token);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{name} failed: {e}"))?
            .ok_or_else(|| format!("Secret {namespace}/{name} does not exist"))?;
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("Secret {namespace}/{name} has no {TOKEN_KEY:?} key"))?;
        self.tokens.insert(key, token.clone(), TOKEN_FOR);
        Ok(token)
    }
}
