//! The bind ledger: one ConfigMap per cluster whose entries say who holds each taken server (a
//! claim, or the cluster itself to promote the server to the shared Service or to remove it).
//! Writing an entry is the fence: every write is conditional on the resourceVersion it was
//! decided on, so two leaders, or a bind racing a scale-down in another process, can never take
//! one server twice; and one write takes the servers of a whole burst of claims. The server pod
//! is stamped with its claim later, off the claim's path. Owned by the cluster, it goes with it.
//! This file decides (entries, verdicts, the object); `controller/ledger.rs` writes.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::labels::cluster_labels;
use crate::crd::SparkConnectCluster;

/// `app.kubernetes.io/component` of bind ledgers (what the ledger watch selects).
pub const BIND_COMPONENT: &str = "server-binds";

/// Holder of an entry by which the cluster takes a server to remove it (a claim's name cannot
/// contain a `/`, so no claim is ever mistaken for it).
const RETIRING_HOLDER: &str = "sparkconnect.dev/retiring";
/// Holder of an entry by which the cluster takes a server for its shared Service.
const SHARED_HOLDER: &str = "sparkconnect.dev/shared";

/// Who a ledger entry hands its server to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindHolder<'a> {
    /// A claim: its name and its uid (a claim created again under a name is another claim).
    Claim {
        /// The claim's name.
        name: &'a str,
        /// The claim's uid.
        uid: &'a str,
    },
    /// The cluster, to remove the server.
    Retiring,
    /// The cluster, for its shared Service.
    Shared,
}

impl<'a> BindHolder<'a> {
    /// The entry's `holder`.
    pub fn identity(self) -> &'a str {
        match self {
            Self::Claim { name, .. } => name,
            Self::Retiring => RETIRING_HOLDER,
            Self::Shared => SHARED_HOLDER,
        }
    }

    /// The claim it names, if it is one.
    pub fn claim(self) -> Option<&'a str> {
        match self {
            Self::Claim { name, .. } => Some(name),
            Self::Retiring | Self::Shared => None,
        }
    }
}

/// One server's entry: the pod it was written for (a later pod of the same name is another
/// server) and who holds it. Kept small (a ledger holds one per server of its cluster, up to
/// `hotPool.maxServers`): the claim's user is read from the claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// UID of the server pod.
    pub pod: String,
    /// The holder's identity (a claim's name, or one of the cluster's own holders).
    pub holder: String,
    /// UID of the holding claim (empty for the cluster's own holders).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim_uid: String,
}

impl Entry {
    /// The entry handing server `pod` to `holder`; `None` for a pod without a uid (never one
    /// from the apiserver).
    pub fn new(pod: &Pod, holder: BindHolder<'_>) -> Option<Self> {
        let claim_uid = match holder {
            BindHolder::Claim { uid, .. } => uid.to_string(),
            BindHolder::Retiring | BindHolder::Shared => String::new(),
        };
        Some(Self {
            pod: pod.metadata.uid.clone()?,
            holder: holder.identity().to_string(),
            claim_uid,
        })
    }

    /// Who it hands its server to.
    pub fn holder(&self) -> BindHolder<'_> {
        match self.holder.as_str() {
            RETIRING_HOLDER => BindHolder::Retiring,
            SHARED_HOLDER => BindHolder::Shared,
            name => BindHolder::Claim {
                name,
                uid: &self.claim_uid,
            },
        }
    }

    /// The entry as stored (a ConfigMap value).
    pub fn encode(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Name of cluster `cluster`'s bind ledger.
pub fn ledger_name(cluster: &str) -> String {
    format!("{cluster}-binds")
}

/// A new ledger of cluster `cluster` (uid `cluster_uid`) in `namespace`, holding `entries`
/// (server name to encoded entry).
pub fn ledger(
    cluster: &str,
    cluster_uid: &str,
    namespace: &str,
    entries: BTreeMap<String, String>,
) -> ConfigMap {
    let mut labels = cluster_labels(cluster);
    labels.insert("app.kubernetes.io/component".into(), BIND_COMPONENT.into());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ledger_name(cluster)),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: SparkConnectCluster::api_version(&()).into(),
                kind: SparkConnectCluster::kind(&()).into(),
                name: cluster.into(),
                uid: cluster_uid.into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        data: Some(entries),
        ..ConfigMap::default()
    }
}

/// Whether `map` is the ledger of the cluster with uid `cluster_uid` (controlled by it and
/// labelled as a ledger): anything else hands out nothing.
pub fn is_ledger_of(map: &ConfigMap, cluster_uid: &str) -> bool {
    let controlled = map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == cluster_uid);
    let labelled = map
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/component"))
        .is_some_and(|c| c == BIND_COMPONENT);
    controlled && labelled
}

/// A ledger's readable entries parsed once, so that the many claims of a burst each read the
/// one version of the ledger they see without parsing every entry again: by server name, and
/// the servers each claim holds by the claim's uid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LedgerView {
    entries: BTreeMap<String, Entry>,
    by_claim: HashMap<String, Vec<String>>,
}

impl LedgerView {
    /// The readable entries of `map` (one that does not parse hands out nothing).
    pub fn of(map: &ConfigMap) -> Self {
        let mut view = Self::default();
        for (server, entry) in entries(map) {
            if !entry.claim_uid.is_empty() {
                view.by_claim
                    .entry(entry.claim_uid.clone())
                    .or_default()
                    .push(server.to_string());
            }
            view.entries.insert(server.to_string(), entry);
        }
        view
    }

    /// Every entry, by server name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(server, e)| (server.as_str(), e))
    }

    /// The entry of server `pod`, if it was written for this very pod.
    pub fn entry_of(&self, pod: &Pod) -> Option<&Entry> {
        let (name, uid) = (pod.metadata.name.as_deref()?, pod.metadata.uid.as_deref()?);
        self.entries.get(name).filter(|entry| entry.pod == uid)
    }

    /// The entries that name the claim with uid `claim_uid`, with their server's name (one,
    /// unless someone else wrote the ledger).
    pub fn held_by_claim(&self, claim_uid: &str) -> impl Iterator<Item = (&str, &Entry)> {
        self.by_claim
            .get(claim_uid)
            .into_iter()
            .flatten()
            .filter_map(|server| Some((server.as_str(), self.entries.get(server)?)))
    }
}

/// Every readable entry of a ledger, by server name (an entry that does not parse hands out
/// nothing).
pub fn entries(map: &ConfigMap) -> impl Iterator<Item = (&str, Entry)> {
    map.data.iter().flatten().filter_map(|(server, value)| {
        let entry = serde_json::from_str(value).ok()?;
        Some((server.as_str(), entry))
    })
}

/// An entry whose server pod is gone: the server's name and the pod uid it was written for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleEntry {
    /// The server's name (the entry's key).
    pub server: String,
    /// UID of the pod the entry was written for.
    pub pod: String,
}

impl StaleEntry {
    /// The entry of server `server` written for pod `pod` (a uid).
    pub fn new(server: &str, pod: &str) -> Self {
        Self {
            server: server.into(),
            pod: pod.into(),
        }
    }
}

/// Of `stale`, the servers whose entry `map` still holds as it was found stale: an entry
/// written since for a later pod of the same name hands that pod out and stays.
pub fn still_stale<'a>(map: &ConfigMap, stale: &'a [StaleEntry]) -> Vec<&'a str> {
    stale
        .iter()
        .filter(|gone| entry_named(map, &gone.server).is_some_and(|e| e.pod == gone.pod))
        .map(|gone| gone.server.as_str())
        .collect()
}

/// The entry of server `pod` in a ledger, if it was written for this very pod.
pub fn entry_of(map: &ConfigMap, pod: &Pod) -> Option<Entry> {
    let (name, uid) = (pod.metadata.name.as_deref()?, pod.metadata.uid.as_deref()?);
    entry_named(map, name).filter(|entry| entry.pod == uid)
}

/// The readable entry under server name `server`, whichever pod it was written for.
fn entry_named(map: &ConfigMap, server: &str) -> Option<Entry> {
    serde_json::from_str(map.data.as_ref()?.get(server)?).ok()
}

/// What a ledger says of a server asked for `wanted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No entry for this pod: it may be taken by writing one.
    Free,
    /// The holder has it already (an earlier try, or the cluster removing a server it took
    /// for its shared Service).
    Held,
    /// Someone else holds it.
    Taken,
}

/// What `ledger` says of server `pod` asked for `wanted`.
pub fn verdict(ledger: Option<&ConfigMap>, pod: &Pod, wanted: BindHolder<'_>) -> Verdict {
    let Some(entry) = ledger.and_then(|l| entry_of(l, pod)) else {
        return Verdict::Free;
    };
    let found = entry.holder();
    let removing_shared = wanted == BindHolder::Retiring && found == BindHolder::Shared;
    if found == wanted || removing_shared {
        Verdict::Held
    } else {
        Verdict::Taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        crate::test_support::pod_of("team", name, uid)
    }

    const CLAIM_1: BindHolder<'static> = BindHolder::Claim {
        name: "claim-1",
        uid: "cu1",
    };

    fn ledger_with(entries: &[(&Pod, BindHolder<'_>)]) -> ConfigMap {
        let data = entries
            .iter()
            .map(|(p, h)| {
                let entry = Entry::new(p, *h).unwrap();
                (p.metadata.name.clone().unwrap(), entry.encode())
            })
            .collect();
        ledger("c", "cluster-uid", "team", data)
    }

    #[test]
    fn the_ledger_is_named_after_its_cluster_owned_by_it_and_labelled() {
        let map = ledger_with(&[]);
        assert_eq!(map.metadata.name.as_deref(), Some("c-binds"));
        assert_eq!(map.metadata.namespace.as_deref(), Some("team"));
        let labels = map.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["sparkconnect.dev/cluster"], "c");
        assert_eq!(labels["app.kubernetes.io/component"], BIND_COMPONENT);
        let owner = &map.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("SparkConnectCluster", "cluster-uid")
        );
        assert!(is_ledger_of(&map, "cluster-uid"));
        assert!(!is_ledger_of(&map, "another-cluster"));
    }

    #[test]
    fn an_entry_names_the_claim_by_uid_for_that_very_pod_only() {
        let p = pod("c-abc", "u1");
        let map = ledger_with(&[(&p, CLAIM_1)]);
        let entry = entry_of(&map, &p).unwrap();
        assert_eq!(entry.holder(), CLAIM_1);
        assert_eq!(
            entry_of(&map, &pod("c-abc", "u2")),
            None,
            "a pod of the same name later"
        );
        assert_eq!(entry_of(&map, &pod("c-xyz", "u1")), None);
        assert_eq!(entries(&map).count(), 1);
    }

    #[test]
    fn a_ledger_view_finds_a_claims_server_by_the_claims_uid_and_each_entry_for_its_own_pod() {
        let (p1, p2, p3) = (pod("c-1", "u1"), pod("c-2", "u2"), pod("c-3", "u3"));
        let b = BindHolder::Claim {
            name: "b",
            uid: "cu2",
        };
        let mut map = ledger_with(&[(&p1, CLAIM_1), (&p2, b), (&p3, BindHolder::Shared)]);
        if let Some(data) = map.data.as_mut() {
            data.insert("c-4".into(), "{not json".into());
        }
        let view = LedgerView::of(&map);
        let held: Vec<&str> = view.held_by_claim("cu1").map(|(s, _)| s).collect();
        assert_eq!(held, ["c-1"]);
        assert_eq!(view.held_by_claim("cu2").count(), 1);
        assert_eq!(view.held_by_claim("").count(), 0, "the cluster's own holds");
        assert_eq!(view.held_by_claim("nobody").count(), 0);
        assert_eq!(
            view.entries().count(),
            3,
            "the unreadable entry is left out"
        );
        assert_eq!(view.entry_of(&p1).map(Entry::holder), Some(CLAIM_1));
        assert_eq!(
            view.entry_of(&pod("c-1", "u9")),
            None,
            "a later pod of the name"
        );
        assert_eq!(view.entry_of(&pod("c-4", "u4")), None);
        for (server, entry) in view.entries() {
            let pod = pod(server, &entry.pod);
            assert_eq!(view.entry_of(&pod), entry_of(&map, &pod).as_ref());
        }
    }

    #[test]
    fn an_entry_that_does_not_parse_hands_out_nothing() {
        let p = pod("c-abc", "u1");
        let mut map = ledger_with(&[]);
        map.data = Some(BTreeMap::from([("c-abc".into(), "{not json".into())]));
        assert_eq!(entry_of(&map, &p), None);
        assert_eq!(entries(&map).count(), 0);
        assert_eq!(verdict(Some(&map), &p, CLAIM_1), Verdict::Free);
    }

    #[test]
    fn a_pod_without_a_uid_gets_no_entry() {
        let mut p = pod("c-abc", "u1");
        p.metadata.uid = None;
        assert!(Entry::new(&p, CLAIM_1).is_none());
    }

    #[test]
    fn the_cluster_takes_a_server_under_a_holder_no_claim_can_have() {
        let p = pod("c-abc", "u1");
        for holder in [BindHolder::Retiring, BindHolder::Shared] {
            let entry = Entry::new(&p, holder).unwrap();
            assert!(
                entry.holder.contains('/'),
                "{} is not a claim name",
                entry.holder
            );
            assert_eq!(entry.holder(), holder);
            assert_eq!(holder.claim(), None);
        }
        assert_eq!(CLAIM_1.claim(), Some("claim-1"));
    }

    #[test]
    fn an_entry_gives_its_server_to_its_own_holder_and_a_shared_server_to_its_removal() {
        use BindHolder::*;
        let p = pod("c-abc", "u1");
        let b = Claim {
            name: "b",
            uid: "2",
        };
        let again = Claim {
            name: "claim-1",
            uid: "3",
        };
        let held_by = |h| ledger_with(&[(&p, h)]);
        assert_eq!(verdict(None, &p, CLAIM_1), Verdict::Free);
        assert_eq!(verdict(Some(&held_by(CLAIM_1)), &p, CLAIM_1), Verdict::Held);
        assert_eq!(verdict(Some(&held_by(CLAIM_1)), &p, b), Verdict::Taken);
        assert_eq!(
            verdict(Some(&held_by(CLAIM_1)), &p, again),
            Verdict::Taken,
            "a claim created again under the name is another claim"
        );
        assert_eq!(
            verdict(Some(&held_by(CLAIM_1)), &p, Retiring),
            Verdict::Taken
        );
        assert_eq!(verdict(Some(&held_by(CLAIM_1)), &p, Shared), Verdict::Taken);
        assert_eq!(verdict(Some(&held_by(Shared)), &p, Retiring), Verdict::Held);
        assert_eq!(
            verdict(Some(&held_by(Retiring)), &p, Shared),
            Verdict::Taken
        );
        assert_eq!(
            verdict(Some(&held_by(Retiring)), &p, CLAIM_1),
            Verdict::Taken
        );
        assert_eq!(
            verdict(Some(&held_by(Retiring)), &pod("c-abc", "u9"), CLAIM_1),
            Verdict::Free,
            "an entry of an earlier pod of the name holds nothing"
        );
    }

    #[test]
    fn a_stale_entry_rewritten_for_a_later_pod_of_its_name_is_no_longer_stale() {
        let (gone, later) = (pod("s-1", "uid-1"), pod("s-1", "uid-2"));
        let other = pod("s-2", "uid-3");
        let stale = [
            StaleEntry::new("s-1", "uid-1"),
            StaleEntry::new("s-2", "uid-3"),
            StaleEntry::new("s-3", "uid-4"),
        ];
        let found = ledger_with(&[(&gone, CLAIM_1), (&other, BindHolder::Shared)]);
        assert_eq!(still_stale(&found, &stale), vec!["s-1", "s-2"]);
        // The server's name was taken again, for a later pod, after the entries were read.
        let rewritten = ledger_with(&[(&later, CLAIM_1), (&other, BindHolder::Shared)]);
        assert_eq!(still_stale(&rewritten, &stale), vec!["s-2"]);
    }
}
