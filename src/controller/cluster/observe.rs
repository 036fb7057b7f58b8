//! Observe: what exists for one cluster, read from the watch stores (no API calls). A pod
//! counts as one of the cluster's servers only when the cluster controls it and it carries the
//! server label the operator gave it; a pod that merely copies the labels is listed as foreign
//! and never probed, put behind a Service or handed to a claim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::children::ClusterToken;
use crate::builders::bind_ledger::{BindHolder, LedgerView, StaleEntry};
use crate::builders::labels::{
    CLAIM_ANNOTATION, CLAIM_UID_ANNOTATION, ROLE_LABEL, SERVER_LABEL, SPEC_HASH_LABEL, STATE_LABEL,
    ServerRole, ServerState,
};
use crate::controller::apply::controlled_by;
use crate::controller::context::{Context, cluster_key};
use crate::controller::pool::Hashes;
use crate::controller::pool::claims::{ClaimView, ClaimedBy};
use crate::controller::pool::plan::ServerView;
use crate::controller::stores::Stores;
use crate::crd::{ClaimPhase, SparkConnectClaim};
use crate::duration::CLAIM_TTL;
use crate::probe::health::{HealthBook, Verdict, WarmupState};
use crate::store_index::Indexed;
use crate::validate::ValidCluster;

/// Everything that exists for one cluster.
pub struct Observed {
    /// The cluster's own live servers, by name.
    pub servers: BTreeMap<String, Arc<Pod>>,
    /// Names of its own pods, live or terminating (their Services stay until they are gone).
    pub all_servers: Vec<String>,
    /// What the plan needs to know of each live server.
    pub views: Vec<ServerView>,
    /// Pods that carry the cluster's server labels without being its servers.
    pub foreign: Vec<String>,
    /// The cluster's live claims.
    pub claims: BTreeMap<String, Arc<SparkConnectClaim>>,
    /// What the claim plan needs to know of each.
    pub claim_views: Vec<ClaimView>,
    /// Claimed server → the claim named on it.
    pub claimed_servers: BTreeMap<String, ClaimedBy>,
    /// Servers handed to a claim whose pod the store does not show stamped yet (by this
    /// process, or in the bind ledger): server → claim.
    pub handed_out: BTreeMap<String, String>,
    /// Servers the bind ledger hands to a claim whose pod is not stamped with it yet.
    pub unstamped: BTreeMap<String, Taken>,
    /// Ledger entries that outlived their pod.
    pub gone_from_ledger: Vec<StaleEntry>,
    /// The cluster's Services, by name.
    pub services: BTreeMap<String, Arc<Service>>,
    /// The cluster's EndpointSlices, by name.
    pub slices: BTreeMap<String, Arc<EndpointSlice>>,
    /// What current servers are built from.
    pub hashes: Hashes,
    /// How long the newest warmed-up server's warm-up took.
    pub last_warmup: Option<Duration>,
    /// Starting servers whose last warm-up failed: name and why.
    pub failed_warmups: Vec<(String, String)>,
}

/// What a ledger entry says of its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The claim the server is handed to.
    pub claim: String,
    /// Its uid.
    pub claim_uid: String,
    /// The claim's user, if it names one (read from the claim).
    pub user: Option<String>,
}

/// Who made a pod that carries a cluster's label.
#[derive(Debug, PartialEq, Eq)]
enum Kin {
    /// The operator, for the cluster with this uid.
    Server,
    /// Someone else: reported, never probed or handed out.
    Stranger,
    /// Someone else, and the pod is being deleted (e.g. a server of an earlier cluster of the
    /// same name on its way out): left alone without a report.
    LeavingStranger,
}

fn kin(pod: &Pod, cluster_uid: &str) -> Kin {
    let name = pod.metadata.name.as_ref();
    if controlled_by(pod, cluster_uid) && pod.labels().get(SERVER_LABEL) == name {
        Kin::Server
    } else if pod.metadata.deletion_timestamp.is_some() {
        Kin::LeavingStranger
    } else {
        Kin::Stranger
    }
}

/// Reads the stores for `valid`.
pub fn observe(valid: &ValidCluster<'_>, ctx: &Context, token: &ClusterToken) -> Observed {
    let stores = &ctx.stores;
    let Pods {
        servers,
        all_servers,
        foreign,
    } = pods_of(valid, stores);

    let book = ctx.prober.book();
    seed_from_labels(book, servers.values());
    let warmup_on = valid.warmup.is_some();
    let ledger = stores.ledger_view(valid.namespace, valid.name, valid.uid);
    let fenced = fenced(&ledger, &servers, &all_servers);
    let views = servers
        .values()
        .filter_map(|p| server_view(p, book, warmup_on))
        .map(|mut v| {
            v.taken_for = fenced.by_cluster.get(&v.name).copied();
            v
        })
        .collect();
    let (last_warmup, failed_warmups) = warmups(&servers, book);
    let claimed_servers = claimed_servers(&servers);
    let mut unstamped = fenced.unstamped;
    let gone_from_ledger = fenced.gone;
    let still_idle = |server: &str| {
        servers.get(server).is_some_and(|pod| {
            pod.metadata.deletion_timestamp.is_none() && ServerState::of(pod) == ServerState::Idle
        })
    };
    let mut handed_out = ctx.allocator.handed_out(&key(valid), still_idle);
    handed_out.extend(unstamped.iter().map(|(s, t)| (s.clone(), t.claim.clone())));

    let claims = claims_of(valid, stores);
    for taken in unstamped.values_mut() {
        taken.user = claims
            .get(&taken.claim)
            .filter(|c| c.metadata.uid.as_deref() == Some(taken.claim_uid.as_str()))
            .and_then(|c| c.spec.user.clone());
    }
    let claim_views = claims.values().filter_map(|c| claim_view(c)).collect();

    let services = owned_by(&stores.services, valid);
    let slices = owned_by(&stores.slices, valid);

    Observed {
        servers,
        all_servers,
        views,
        foreign,
        claims,
        claim_views,
        claimed_servers,
        handed_out,
        unstamped,
        gone_from_ledger,
        services,
        slices,
        hashes: hashes(&valid.spec_hash, token),
        last_warmup,
        failed_warmups,
    }
}

/// The cluster's pods, sorted out.
struct Pods {
    /// Live servers by name.
    servers: BTreeMap<String, Arc<Pod>>,
    /// Every server's name, those being deleted too.
    all_servers: Vec<String>,
    /// Pods with the cluster's label that the cluster does not control, sorted.
    foreign: Vec<String>,
}

/// The pods in the cluster's namespace that carry its label: its servers, and strangers.
fn pods_of(valid: &ValidCluster<'_>, stores: &Stores) -> Pods {
    let mut pods = Pods {
        servers: BTreeMap::new(),
        all_servers: Vec::new(),
        foreign: Vec::new(),
    };
    for pod in stores.pods.of_cluster(valid.namespace, valid.name) {
        let name = pod.name_any();
        match kin(&pod, valid.uid) {
            Kin::Server => {}
            Kin::Stranger => {
                pods.foreign.push(name);
                continue;
            }
            Kin::LeavingStranger => continue,
        }
        pods.all_servers.push(name.clone());
        if pod.metadata.deletion_timestamp.is_none() {
            pods.servers.insert(name, pod);
        }
    }
    pods.foreign.sort();
    pods
}

/// Servers stamped claimed, with the claim each records.
fn claimed_servers(servers: &BTreeMap<String, Arc<Pod>>) -> BTreeMap<String, ClaimedBy> {
    servers
        .iter()
        .filter(|(_, p)| ServerState::of(p) == ServerState::Claimed)
        .map(|(name, p)| {
            let recorded = |key: &str| p.annotations().get(key).cloned().unwrap_or_default();
            let by = ClaimedBy {
                name: recorded(CLAIM_ANNOTATION),
                uid: recorded(CLAIM_UID_ANNOTATION),
            };
            (name.clone(), by)
        })
        .collect()
}

/// The cluster's claims that are not being deleted, by name.
fn claims_of(
    valid: &ValidCluster<'_>,
    stores: &Stores,
) -> BTreeMap<String, Arc<SparkConnectClaim>> {
    stores
        .claims
        .of_cluster(valid.namespace, valid.name)
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| (c.name_any(), c))
        .collect()
}

/// What the cluster's bind ledger says.
#[derive(Debug, Default, PartialEq)]
struct Fenced {
    /// Servers the ledger hands to a claim while their pod is not stamped claimed.
    unstamped: BTreeMap<String, Taken>,
    /// Servers the cluster took for itself, with what for (Shared or Retiring), while their
    /// pod's label does not say so.
    by_cluster: BTreeMap<String, ServerState>,
    /// Entries whose pod is gone.
    gone: Vec<StaleEntry>,
}

/// Reads the cluster's bind ledger for each of its servers (`all_servers`: the live and the
/// terminating).
fn fenced(
    ledger: &LedgerView,
    servers: &BTreeMap<String, Arc<Pod>>,
    all_servers: &[String],
) -> Fenced {
    let mut fenced = Fenced::default();
    for (name, entry) in ledger.entries() {
        let pod = servers.get(name);
        let live = pod.is_some_and(|p| p.metadata.uid.as_deref() == Some(entry.pod.as_str()));
        if !live {
            // Terminating servers keep their entry until they are gone.
            let leaving = pod.is_none() && all_servers.iter().any(|s| s == name);
            if !leaving {
                fenced.gone.push(StaleEntry::new(name, &entry.pod));
            }
            continue;
        }
        let label = pod.map_or(ServerState::Idle, |p| ServerState::of(p));
        match entry.holder() {
            BindHolder::Claim { name: claim, uid } if label != ServerState::Claimed => {
                let taken = Taken {
                    claim: claim.to_string(),
                    claim_uid: uid.to_string(),
                    user: None,
                };
                fenced.unstamped.insert(name.to_string(), taken);
            }
            BindHolder::Shared if label != ServerState::Shared => {
                fenced
                    .by_cluster
                    .insert(name.to_string(), ServerState::Shared);
            }
            BindHolder::Retiring if label != ServerState::Retiring => {
                fenced
                    .by_cluster
                    .insert(name.to_string(), ServerState::Retiring);
            }
            _ => {}
        }
    }
    fenced
}

/// The warm-up time of the newest server that finished one, and the failing warm-ups.
fn warmups(
    servers: &BTreeMap<String, Arc<Pod>>,
    book: &HealthBook,
) -> (Option<Duration>, Vec<(String, String)>) {
    let mut newest = None;
    let mut failed = Vec::new();
    for (name, pod) in servers {
        let Some(uid) = pod.uid() else { continue };
        match book.get(&uid).warmup {
            WarmupState::Done(took) => {
                let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                if newest.is_none_or(|(at, _)| created > at) {
                    newest = Some((created, took));
                }
            }
            WarmupState::Failed(why) => failed.push((name.clone(), why)),
            WarmupState::NotStarted | WarmupState::Running => {}
        }
    }
    (newest.map(|(_, took)| took), failed)
}

/// The objects of a store that carry the cluster's label and that it controls, by name.
fn owned_by<K>(store: &Indexed<K>, valid: &ValidCluster<'_>) -> BTreeMap<String, Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .of_cluster(valid.namespace, valid.name)
        .into_iter()
        .filter(|o| controlled_by(o.as_ref(), valid.uid))
        .map(|o| (o.name_any(), o))
        .collect()
}

/// `namespace/name` of the cluster.
pub fn key(valid: &ValidCluster<'_>) -> String {
    cluster_key(valid.namespace, valid.name)
}

/// Endpoint servers are current only with the current cluster token; pool servers hold their
/// own, so only the spec counts for them.
pub fn hashes(spec_hash: &str, token: &ClusterToken) -> Hashes {
    let endpoint = match token.value() {
        Some(token) => {
            let fingerprint = hex::encode(&Sha256::digest(token.as_bytes())[..4]);
            format!("{spec_hash}-{fingerprint}")
        }
        None => spec_hash.to_string(),
    };
    Hashes {
        endpoint,
        pool: spec_hash.to_string(),
    }
}

/// Servers another operator process already found healthy (their label says so) count as
/// healthy until this process's own probes say otherwise.
fn seed_from_labels<'a>(book: &HealthBook, servers: impl Iterator<Item = &'a Arc<Pod>>) {
    for pod in servers {
        let state = ServerState::of(pod);
        if matches!(state, ServerState::Idle | ServerState::Shared)
            && let Some(uid) = pod.uid()
        {
            book.seed(&uid, Verdict::Healthy);
        }
    }
}

/// What the plan needs to know about a server pod: its probe verdict (a starting server counts
/// as healthy only once warmed up, when warm-up is on) and whether it exited.
fn server_view(pod: &Pod, book: &HealthBook, warmup_on: bool) -> Option<ServerView> {
    let labels = pod.labels();
    let health = book.get(&pod.uid()?);
    let state = ServerState::from_label(labels.get(STATE_LABEL).map(String::as_str));
    let warmed = !warmup_on
        || state != ServerState::Starting
        || matches!(health.warmup, WarmupState::Done(_));
    let verdict = health.verdict;
    let exited = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Failed" || p == "Succeeded");
    Some(ServerView {
        name: pod.metadata.name.clone()?,
        state,
        role: ServerRole::from_label(labels.get(ROLE_LABEL).map(String::as_str)),
        healthy: verdict == Verdict::Healthy && warmed,
        auth_rejected: verdict == Verdict::AuthRejected,
        exited,
        spec_hash: labels.get(SPEC_HASH_LABEL).cloned().unwrap_or_default(),
        created: pod.metadata.creation_timestamp.as_ref()?.0,
        taken_for: None,
    })
}

fn claim_view(claim: &SparkConnectClaim) -> Option<ClaimView> {
    let status = claim.status.clone().unwrap_or_default();
    Some(ClaimView {
        name: claim.metadata.name.clone()?,
        uid: claim.metadata.uid.clone().unwrap_or_default(),
        created: claim.metadata.creation_timestamp.as_ref()?.0,
        phase: if status.phase == ClaimPhase::Pending && status.server.is_some() {
            ClaimPhase::Bound
        } else {
            status.phase
        },
        server: status.server,
        bound_at: status.bound_at.map(|t| t.0),
        ttl: claim
            .spec
            .ttl
            .as_deref()
            .and_then(|t| CLAIM_TTL.parse(t).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::bind_ledger::{Entry, ledger};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn starting_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("s-1".into()),
                uid: Some("uid-1".into()),
                creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                labels: Some(BTreeMap::from([(
                    STATE_LABEL.to_string(),
                    ServerState::Starting.as_str().to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    /// What a ledger of cluster `c` handing `pod` to `holder` says.
    fn ledger_holding(pod: &Pod, holder: BindHolder<'_>) -> LedgerView {
        let entry = Entry::new(pod, holder).expect("an entry");
        let data = BTreeMap::from([(pod.name_any(), entry.encode())]);
        LedgerView::of(&ledger("c", "cluster-uid", "ns", data))
    }

    #[test]
    fn a_server_its_entry_hands_to_a_claim_is_unstamped_until_its_pod_says_claimed() {
        let mut pod = starting_pod();
        pod.metadata.namespace = Some("ns".into());
        let holder = BindHolder::Claim {
            name: "claim-1",
            uid: "cu1",
        };
        let ledger = ledger_holding(&pod, holder);
        let mut servers = BTreeMap::from([("s-1".to_string(), Arc::new(pod.clone()))]);
        let all = vec!["s-1".to_string()];
        let unstamped = |servers: &BTreeMap<_, _>| fenced(&ledger, servers, &all).unstamped;
        let taken = unstamped(&servers);
        assert_eq!(
            taken.get("s-1"),
            Some(&Taken {
                claim: "claim-1".into(),
                claim_uid: "cu1".into(),
                user: None
            }),
            "the user is read from the claim"
        );
        // Stamped: the pod says so itself.
        let mut stamped = pod.clone();
        stamped.metadata.labels = Some(BTreeMap::from([(
            STATE_LABEL.to_string(),
            ServerState::Claimed.as_str().to_string(),
        )]));
        servers.insert("s-1".into(), Arc::new(stamped));
        assert!(unstamped(&servers).is_empty());
        // A later pod of the same name is not handed out by the earlier pod's entry.
        let mut later = pod;
        later.metadata.uid = Some("uid-2".into());
        servers.insert("s-1".into(), Arc::new(later));
        assert!(unstamped(&servers).is_empty());
    }

    #[test]
    fn an_entry_outliving_its_pod_is_gone_but_a_terminating_one_stays() {
        let mut pod = starting_pod();
        pod.metadata.namespace = Some("ns".into());
        let ledger = ledger_holding(&pod, BindHolder::Shared);
        let none = BTreeMap::new();
        let seen = fenced(&ledger, &none, &["s-1".to_string()]);
        assert!(seen.gone.is_empty(), "terminating: {seen:?}");
        let seen = fenced(&ledger, &none, &[]);
        let stale = vec![StaleEntry::new("s-1", "uid-1")];
        assert_eq!(seen.gone, stale);
        let mut later = pod;
        later.metadata.uid = Some("uid-2".into());
        let replaced = BTreeMap::from([("s-1".to_string(), Arc::new(later))]);
        let seen = fenced(&ledger, &replaced, &["s-1".to_string()]);
        assert_eq!(seen.gone, stale, "a later pod of the name");
    }

    #[test]
    fn a_server_the_cluster_took_is_planned_by_what_for_until_its_label_says_so() {
        let mut pod = starting_pod();
        pod.metadata.namespace = Some("ns".into());
        let mut servers = BTreeMap::from([("s-1".to_string(), Arc::new(pod.clone()))]);
        for (holder, state) in [
            (BindHolder::Shared, ServerState::Shared),
            (BindHolder::Retiring, ServerState::Retiring),
        ] {
            let ledger = ledger_holding(&pod, holder);
            let all = vec!["s-1".to_string()];
            let seen = fenced(&ledger, &servers, &all);
            assert_eq!(seen.by_cluster.get("s-1"), Some(&state));
            assert!(seen.unstamped.is_empty());
            let mut labelled = pod.clone();
            labelled.metadata.labels = Some(BTreeMap::from([(
                STATE_LABEL.into(),
                state.as_str().into(),
            )]));
            servers.insert("s-1".into(), Arc::new(labelled));
            assert_eq!(
                fenced(&ledger, &servers, &all),
                Fenced::default(),
                "the label caught up"
            );
            servers.insert("s-1".into(), Arc::new(pod.clone()));
        }
    }

    #[test]
    fn a_server_of_an_earlier_cluster_of_the_same_name_on_its_way_out_is_not_reported() {
        let mut pod = starting_pod();
        pod.metadata.labels = Some(BTreeMap::from([(SERVER_LABEL.to_string(), "s-1".into())]));
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "sparkconnect.dev/v1alpha1".into(),
                kind: "SparkConnectCluster".into(),
                name: "c".into(),
                uid: "earlier".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        assert_eq!(kin(&pod, "earlier"), Kin::Server);
        assert_eq!(kin(&pod, "now"), Kin::Stranger, "a live copy is reported");
        pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(kin(&pod, "now"), Kin::LeavingStranger);
    }

    #[test]
    fn a_starting_server_counts_as_healthy_only_once_warmed_up() {
        let book = HealthBook::default();
        let pod = starting_pod();
        book.seed("uid-1", Verdict::Healthy);
        assert!(!server_view(&pod, &book, true).unwrap().healthy);
        assert!(
            server_view(&pod, &book, false).unwrap().healthy,
            "warm-up off"
        );
        book.update("uid-1", |h| {
            h.warmup = WarmupState::Failed("query 1 of 3: boom".into());
            false
        });
        assert!(!server_view(&pod, &book, true).unwrap().healthy);
        book.update("uid-1", |h| {
            h.warmup = WarmupState::Done(Duration::from_millis(1200));
            false
        });
        assert!(server_view(&pod, &book, true).unwrap().healthy);
        let servers = BTreeMap::from([("s-1".to_string(), Arc::new(pod))]);
        assert_eq!(
            warmups(&servers, &book),
            (Some(Duration::from_millis(1200)), vec![])
        );
    }
}
