//! The fence: takes servers for claims or for the cluster by writing the cluster's bind ledger
//! (see `builders/bind_ledger.rs`). Each cluster's ledger is written by one turn at a time in
//! this process, and every write is conditional on the resourceVersion it was decided on, so
//! no server is ever taken twice, here or by another leader; a conflict re-reads the ledger
//! and decides again. One write takes the servers of a whole burst. A ledger deleted under
//! this process (only the garbage collector, the namespace controller and server managers may)
//! is made again from its last copy, so the servers it held stay held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::OwnedMutexGuard;

use crate::builders::bind_ledger::{
    BindHolder, Entry, StaleEntry, Verdict, is_ledger_of, ledger, ledger_name, still_stale, verdict,
};
use crate::builders::labels::FIELD_MANAGER;
use crate::error::Error;
use crate::store_index::Indexed;

/// Writes a take makes while other writers keep changing the ledger under it.
const ATTEMPTS: usize = 4;

/// What trying to take a server came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The holder has the server: its entry was written now, or by an earlier try.
    Won,
    /// The ledger hands the server to someone else.
    Lost,
}

/// The cluster whose ledger a turn writes, and where to write and read it.
#[derive(Clone, Copy)]
pub struct LedgerOf<'a> {
    /// The API client.
    pub client: &'a Client,
    /// The ledgers the watch has seen.
    pub stored: &'a Indexed<ConfigMap>,
    /// The cluster's namespace.
    pub namespace: &'a str,
    /// The cluster's name.
    pub cluster: &'a str,
    /// The cluster's uid (the ledger is the cluster's only when it controls it).
    pub cluster_uid: &'a str,
}

/// A server asked for, and for whom.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// The server pod as the store shows it.
    pub pod: &'a Pod,
    /// Who is to hold it.
    pub holder: BindHolder<'a>,
}

/// Each cluster's turn at its ledger, holding the ledger as this process last wrote or read it.
#[derive(Default)]
pub struct Ledgers {
    turns: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<ConfigMap>>>>>,
    /// Clusters whose last take met a ConfigMap of the ledger's name that is not theirs.
    squatted: Arc<Mutex<BTreeSet<String>>>,
}

impl Ledgers {
    /// Waits for cluster `key`'s turn at its ledger (writers of one cluster go one at a time;
    /// whoever waited takes what is due by then in one write).
    pub async fn turn(&self, key: &str) -> LedgerTurn {
        let turn = lock(&self.turns)
            .entry(key.to_string())
            .or_default()
            .clone();
        LedgerTurn {
            last: turn.lock_owned().await,
            key: key.to_string(),
            squatted: self.squatted.clone(),
        }
    }

    /// Whether cluster `key`'s last take met a ConfigMap of its ledger's name that it does not
    /// own.
    pub fn squatted(&self, key: &str) -> bool {
        lock(&self.squatted).contains(key)
    }

    /// Forgets a deleted cluster.
    pub fn forget_cluster(&self, key: &str) {
        lock(&self.turns).remove(key);
        lock(&self.squatted).remove(key);
    }
}

/// A lock whose holder cannot leave its data half-changed (a poisoned lock is taken as is).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One cluster's turn at its ledger.
pub struct LedgerTurn {
    last: OwnedMutexGuard<Option<ConfigMap>>,
    key: String,
    squatted: Arc<Mutex<BTreeSet<String>>>,
}

impl LedgerTurn {
    /// Takes every asked server for its holder, in one write; says for each ask, in order,
    /// whether it was won. A ledger of that name the cluster does not own takes nothing and is
    /// an error ([`Error::NotOwned`]).
    pub async fn take(&mut self, of: LedgerOf<'_>, asks: &[Ask<'_>]) -> Result<Vec<Take>, Error> {
        let (api, name) = self.current(of);
        for _ in 0..ATTEMPTS {
            let current = self.last.as_ref();
            if current.is_some_and(|l| !is_ledger_of(l, of.cluster_uid)) {
                // Read again next time: the squatter may be gone (an old cluster's ledger
                // waiting for garbage collection, or a ConfigMap someone removes).
                *self.last = None;
                lock(&self.squatted).insert(self.key.clone());
                return Err(Error::NotOwned {
                    kind: "ConfigMap",
                    name,
                });
            }
            lock(&self.squatted).remove(&self.key);
            let (takes, entries) = decide(current, asks);
            if entries.is_empty() && !current.is_some_and(is_lost) {
                return Ok(takes);
            }
            match write(&api, current, of, &name, entries).await {
                Ok(written) => {
                    *self.last = Some(written);
                    return Ok(takes);
                }
                // Changed or made meanwhile: read it again and decide again.
                Err(e) if e.api_code() == Some(409) => {
                    *self.last = read(&api, &name).await?;
                }
                // Deleted meanwhile: made again on the next try, with the entries it held.
                Err(e) if e.api_code() == Some(404) => *self.last = self.last.take().map(lost),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended(name))
    }

    /// The ledger's API and name, with the ledger as last written or read, or else as the store
    /// shows it.
    fn current(&mut self, of: LedgerOf<'_>) -> (Api<ConfigMap>, String) {
        let name = ledger_name(of.cluster);
        if self.last.is_none() {
            *self.last = stored(of, &name);
        }
        (Api::namespaced(of.client.clone(), of.namespace), name)
    }

    /// Removes the entries found `stale` (their pods no longer exist), in one write; an entry
    /// written since for a later pod of the same name stays.
    pub async fn prune(&mut self, of: LedgerOf<'_>, stale: &[StaleEntry]) -> Result<(), Error> {
        let (api, name) = self.current(of);
        let Some(current) = self.last.as_ref() else {
            return Ok(());
        };
        if !is_ledger_of(current, of.cluster_uid) {
            return Ok(());
        }
        let data: serde_json::Map<String, serde_json::Value> = still_stale(current, stale)
            .into_iter()
            .map(|server| (server.to_string(), serde_json::Value::Null))
            .collect();
        if data.is_empty() {
            return Ok(());
        }
        // An entry of a pod that is gone holds nothing, and this process writes the ledger
        // only in turns, each keeping what it wrote in `current`: an entry still naming the
        // gone pod there is stale, so the write needs no condition.
        let patch = json!({"data": data});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => *self.last = Some(written),
            Err(kube::Error::Api(s)) if s.code == 404 => *self.last = self.last.take().map(lost),
            Err(e) => return Err(Error::kube(format!("prune bind ledger {name}"), e)),
        }
        Ok(())
    }
}

/// The ledger as the store shows it.
fn stored(of: LedgerOf<'_>, name: &str) -> Option<ConfigMap> {
    let key = ObjectRef::new(name).within(of.namespace);
    of.stored.get(&key).map(|l| (*l).clone())
}

/// The ledger as this process last saw it, after someone deleted it: its entries still hold
/// their servers, so the next take decides on them and makes the ledger again with them.
fn lost(mut ledger: ConfigMap) -> ConfigMap {
    ledger.metadata.resource_version = None;
    ledger.metadata.uid = None;
    ledger
}

/// Whether `ledger` is one that was deleted under this process ([`lost`]); a copy from the
/// apiserver always has a resourceVersion.
fn is_lost(ledger: &ConfigMap) -> bool {
    ledger.metadata.resource_version.is_none()
}

/// Reads the ledger from the apiserver.
async fn read(api: &Api<ConfigMap>, name: &str) -> Result<Option<ConfigMap>, Error> {
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read bind ledger {name}"), e))
}

/// What `ledger` says to each ask, and the entries to write for those that are free (an ask
/// for a server already asked for earlier in the same batch loses).
fn decide(ledger: Option<&ConfigMap>, asks: &[Ask<'_>]) -> (Vec<Take>, BTreeMap<String, String>) {
    let mut entries = BTreeMap::new();
    let takes = asks
        .iter()
        .map(|ask| {
            let name = ask.pod.name_any();
            match verdict(ledger, ask.pod, ask.holder) {
                Verdict::Held => Take::Won,
                Verdict::Taken => Take::Lost,
                Verdict::Free if entries.contains_key(&name) => Take::Lost,
                Verdict::Free => match Entry::new(ask.pod, ask.holder) {
                    Some(entry) => {
                        entries.insert(name, entry.encode());
                        Take::Won
                    }
                    None => Take::Lost,
                },
            }
        })
        .collect();
    (takes, entries)
}

/// Writes `entries` into the ledger as last seen (`current`): a patch conditional on its
/// resourceVersion, or a create when there is none yet, or none any more (then with the
/// entries the lost ledger held).
async fn write(
    api: &Api<ConfigMap>,
    current: Option<&ConfigMap>,
    of: LedgerOf<'_>,
    name: &str,
    entries: BTreeMap<String, String>,
) -> Result<ConfigMap, Error> {
    let action = || format!("write bind ledger {name}");
    match current {
        None => create(api, of, entries).await,
        Some(deleted) if is_lost(deleted) => {
            let mut held = deleted.data.clone().unwrap_or_default();
            held.extend(entries);
            create(api, of, held).await
        }
        Some(current) => {
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "data": entries,
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    }
    .map_err(|e| Error::kube(action(), e))
}

/// Makes the cluster's ledger with `entries`.
async fn create(
    api: &Api<ConfigMap>,
    of: LedgerOf<'_>,
    entries: BTreeMap<String, String>,
) -> Result<ConfigMap, kube::Error> {
    let new = ledger(of.cluster, of.cluster_uid, of.namespace, entries);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    api.create(&params, &new).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Context;
    use crate::controller::stores::Held;
    use crate::test_support::{context_over, request_json, respond_json, respond_status};
    use std::sync::Mutex as StdMutex;

    fn server(name: &str, uid: &str) -> Pod {
        crate::test_support::pod_of("ns", name, uid)
    }

    /// The ledger of cluster `c` (uid `cluster-uid`) in namespace `ns`, through `ctx`.
    fn ledger_of(ctx: &Context) -> LedgerOf<'_> {
        LedgerOf {
            client: &ctx.client,
            stored: &ctx.stores.ledgers,
            namespace: "ns",
            cluster: "c",
            cluster_uid: "cluster-uid",
        }
    }

    #[tokio::test]
    async fn a_prune_leaves_an_entry_taken_since_for_a_later_pod_of_the_same_name() {
        let (earlier, later, gone) = (
            server("s-1", "uid-1"),
            server("s-1", "uid-2"),
            server("s-2", "uid-9"),
        );
        let data = [
            (&earlier, BindHolder::Shared),
            (&gone, BindHolder::Retiring),
        ]
        .iter()
        .map(|(p, h)| (p.name_any(), Entry::new(p, *h).unwrap().encode()))
        .collect();
        let mut found = ledger("c", "cluster-uid", "ns", data);
        found.metadata.resource_version = Some("5".into());
        let (ctx, mut handle) = context_over(
            Held {
                ledgers: vec![found.clone()],
                ..Held::default()
            },
            "ns",
        );
        // An apiserver merging each patch into the ledger, recording "METHOD server=value".
        let seen = Arc::new(StdMutex::new(Vec::<String>::new()));
        let record = seen.clone();
        let apiserver = tokio::spawn(async move {
            let mut stored = found;
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let body: serde_json::Value = request_json(request).await;
                let data = stored.data.get_or_insert_default();
                for (server, value) in body["data"].as_object().into_iter().flatten() {
                    let change = match value.as_str() {
                        Some(entry) => {
                            data.insert(server.clone(), entry.to_string());
                            "entry"
                        }
                        None => {
                            data.remove(server);
                            "null"
                        }
                    };
                    record
                        .lock()
                        .unwrap()
                        .push(format!("{method} {server}={change}"));
                }
                respond_json(send, &serde_json::to_value(&stored).unwrap());
            }
        });
        let of = ledger_of(&ctx);
        // Both entries were found stale (their pods gone) before this turn took `s-1` again,
        // for a later pod of the name.
        let stale = [
            StaleEntry::new("s-1", "uid-1"),
            StaleEntry::new("s-2", "uid-9"),
        ];
        let ledgers = Ledgers::default();
        let mut turn = ledgers.turn("ns/c").await;
        let holder = BindHolder::Claim {
            name: "claim-1",
            uid: "cu1",
        };
        let took = turn
            .take(
                of,
                &[Ask {
                    pod: &later,
                    holder,
                }],
            )
            .await
            .unwrap();
        assert_eq!(took, vec![Take::Won]);
        turn.prune(of, &stale).await.unwrap();
        // Every request was answered before its call returned.
        apiserver.abort();
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["PATCH s-1=entry", "PATCH s-2=null"],
            "the later pod's entry stays"
        );
    }

    #[tokio::test]
    async fn a_ledger_deleted_under_the_operator_is_made_again_with_the_servers_it_held() {
        let (held, free) = (server("s-1", "uid-1"), server("s-2", "uid-2"));
        let theirs = BindHolder::Claim {
            name: "claim-a",
            uid: "ua",
        };
        let data = BTreeMap::from([(
            "s-1".to_string(),
            Entry::new(&held, theirs).unwrap().encode(),
        )]);
        let mut found = ledger("c", "cluster-uid", "ns", data);
        found.metadata.resource_version = Some("5".into());
        let (ctx, mut handle) = context_over(
            Held {
                ledgers: vec![found],
                ..Held::default()
            },
            "ns",
        );
        // An apiserver on which someone deleted the ledger: a patch finds nothing, a create
        // makes it; it records "METHOD servers".
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let mut body: serde_json::Value = request_json(request).await;
                let servers: Vec<String> = body["data"]
                    .as_object()
                    .map(|d| d.keys().cloned().collect())
                    .unwrap_or_default();
                seen.push(format!("{method} {}", servers.join(",")));
                let (status, reply) = if method == "PATCH" {
                    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "NotFound", "code": 404});
                    (404, gone)
                } else {
                    body["metadata"]["resourceVersion"] = json!("9");
                    (201, body)
                };
                respond_status(send, status, &reply);
                if method == "POST" {
                    return seen;
                }
            }
            seen
        });
        let of = ledger_of(&ctx);
        let ledgers = Ledgers::default();
        let mut turn = ledgers.turn("ns/c").await;
        let ours = BindHolder::Claim {
            name: "claim-b",
            uid: "ub",
        };
        let asks = [
            Ask {
                pod: &held,
                holder: ours,
            },
            Ask {
                pod: &free,
                holder: ours,
            },
        ];
        let took = turn.take(of, &asks).await.unwrap();
        assert_eq!(
            took,
            vec![Take::Lost, Take::Won],
            "the lost ledger's server stays held"
        );
        assert_eq!(
            apiserver.await.unwrap(),
            vec!["PATCH s-2", "POST s-1,s-2"],
            "made again with the entry it held"
        );
    }
}
