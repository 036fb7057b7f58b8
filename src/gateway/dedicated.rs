//! Dedicated servers: a user's first call to a `Dedicated` cluster claims a server from its
//! hot pool with a `SparkConnectClaim` named after the user (so every replica finds the same
//! one, and `kubectl get scclaim` shows who holds what); later calls and sessions go to that
//! server. The claim records its last call; any replica deletes it after the cluster's
//! `gateway.idleTimeout` with no call in flight, and the operator retires the server and refills
//! the pool.
//!
//! Quotas: the operator counts a cluster's gateway claims exactly (`maxDedicatedServers`). The
//! per-user quota spans clusters, so the gateway keeps it: a replica checks it before making a
//! claim, against its store and the claims it is making, and again when its watch first shows
//! the claim, against the user's claims that arrived before it (see `arrivals`). Replicas
//! see claims arrive in the order they were created, so they agree on which claim passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::authn::Identity;
use super::directory::{Directory, GATEWAY_USER_ANNOTATION, LAST_CALL_ANNOTATION, Server};
use super::metrics::GatewayMetrics;
use super::route::{ClusterRef, claim_name, user_key};
use crate::builders::labels::{CLUSTER_LABEL, GATEWAY_USER_LABEL};
use crate::crd::{ClaimPhase, DEDICATED_QUOTA_REACHED, SparkConnectClaim, SparkConnectCluster};
use crate::duration::GATEWAY_IDLE_TIMEOUT;

/// Why no dedicated server can be given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DedicatedError {
    /// A quota is used up.
    #[error(
        "quota {quota} = {value} ({scope}) is used up: release a server or ask for a larger quota"
    )]
    Quota {
        /// The quota's name.
        quota: &'static str,
        /// What it applies to.
        scope: String,
        /// Its value.
        value: usize,
    },
    /// The claim failed or its server is gone.
    #[error("no dedicated server: {0}")]
    Unavailable(String),
}

impl DedicatedError {
    /// The quota's name, for metrics.
    pub fn quota(&self) -> Option<&'static str> {
        match self {
            Self::Quota { quota, .. } => Some(quota),
            Self::Unavailable(_) => None,
        }
    }
}

/// A user's server and the Secret with its token.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// The server.
    pub server: Server,
    /// The claim's token Secret (token auth), if any.
    pub token_secret: Option<String>,
    /// The claim, for activity tracking.
    pub claim: ClaimKey,
}

/// Why a replica deletes a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// The claim ended (failed, or its server is gone).
    Ended,
    /// No call for the cluster's idle timeout.
    Idle,
    /// Made past the per-user quota by replicas at once.
    OverQuota,
}

impl Release {
    /// The `event` label of `dedicated_claims_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::Idle => "idle",
            Self::OverQuota => "over-quota",
        }
    }

    /// Whether the claim is deleted only as it was read (an idle claim that another replica
    /// has just used is kept); a claim past the quota goes whatever changed since.
    fn only_as_read(self) -> bool {
        !matches!(self, Self::OverQuota)
    }
}

/// A claim by namespace and name.
pub type ClaimKey = (String, String);

/// Hands out and releases dedicated servers.
pub struct Dedicated {
    directory: Directory,
    max_per_user: usize,
    claim_wait: Duration,
    metrics: GatewayMetrics,
    /// Calls in flight through this replica, by claim.
    in_flight: Mutex<HashMap<ClaimKey, usize>>,
    /// When this replica last wrote a claim's last-call time, and how often it writes it.
    touched: Mutex<HashMap<ClaimKey, (Instant, Duration)>>,
    /// Claims this replica is making (its store may not show them yet): their cluster and
    /// user key.
    making: Mutex<BTreeMap<ClaimKey, (ClusterRef, String)>>,
}

/// A claim noted as being made by this replica, until dropped.
struct Making<'a> {
    making: &'a Mutex<BTreeMap<ClaimKey, (ClusterRef, String)>>,
    /// The claim, when this call noted it (another call making it already keeps it noted).
    key: Option<ClaimKey>,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            let mut making = self
                .making
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            making.remove(key);
        }
    }
}

fn idle_timeout(cluster: Option<&SparkConnectCluster>) -> Duration {
    cluster
        .and_then(|c| {
            GATEWAY_IDLE_TIMEOUT
                .parse(&c.spec.gateway.idle_timeout)
                .ok()
        })
        .unwrap_or(Duration::from_secs(30 * 60))
}

/// The last call recorded on a claim (its creation if none).
fn last_call(claim: &SparkConnectClaim) -> Option<jiff::Timestamp> {
    claim
        .annotations()
        .get(LAST_CALL_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or_else(|| claim.meta().creation_timestamp.as_ref().map(|t| t.0))
}

fn is_live(claim: &SparkConnectClaim) -> bool {
    !claim.status.as_ref().is_some_and(|s| s.phase.is_final())
        && claim.meta().deletion_timestamp.is_none()
}

/// Whether claim `ours` keeps within a per-user quota of `max`: fewer than `max` live claims of
/// its user arrived before it. A claim whose arrival is unknown counts as earlier; so does
/// every claim when the arrival of `ours` is unknown.
fn within_user_quota(
    ours: &SparkConnectClaim,
    claims: &[Arc<SparkConnectClaim>],
    arrival: impl Fn(&SparkConnectClaim) -> Option<u64>,
    max: usize,
) -> bool {
    let user = ours.labels().get(GATEWAY_USER_LABEL);
    let ours_at = arrival(ours).unwrap_or(u64::MAX);
    let earlier = claims
        .iter()
        .filter(|c| c.uid() != ours.uid() && is_live(c))
        .filter(|c| c.labels().get(GATEWAY_USER_LABEL) == user)
        .filter(|c| arrival(c).is_none_or(|at| at < ours_at))
        .count();
    earlier < max
}

/// Why a claim this call made ended: refused by the operator for the cluster's quota (the
/// quota refusal a replica gives itself), or what its condition says.
fn ended(
    claim: &SparkConnectClaim,
    cluster: &ClusterRef,
    spec: &SparkConnectCluster,
) -> DedicatedError {
    let status = claim.status.clone().unwrap_or_default();
    let condition = status.conditions.first();
    if status.phase == ClaimPhase::Failed
        && condition.is_some_and(|c| c.reason == DEDICATED_QUOTA_REACHED)
    {
        return cluster_quota(cluster, spec);
    }
    DedicatedError::Unavailable(format!(
        "claim {}/{} ended ({:?}): {}",
        cluster.namespace,
        claim.name_any(),
        status.phase,
        condition.map_or("no reason given", |c| c.message.as_str())
    ))
}

fn dedicated_quota(spec: &SparkConnectCluster) -> usize {
    usize::try_from(spec.spec.gateway.max_dedicated_servers).unwrap_or(0)
}

fn cluster_quota(cluster: &ClusterRef, spec: &SparkConnectCluster) -> DedicatedError {
    DedicatedError::Quota {
        quota: "gateway.maxDedicatedServers",
        scope: format!("cluster {cluster}"),
        value: dedicated_quota(spec),
    }
}

impl Dedicated {
    /// At most `max_per_user` dedicated servers per user over all clusters; a call waits at most
    /// `claim_wait` for its claim to be bound.
    pub fn new(
        directory: Directory,
        max_per_user: usize,
        claim_wait: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            directory,
            max_per_user,
            claim_wait,
            metrics,
            in_flight: Mutex::default(),
            touched: Mutex::default(),
            making: Mutex::default(),
        }
    }

    /// The user's server on `cluster`, claiming one first if needed.
    pub async fn assign(
        &self,
        cluster: &ClusterRef,
        spec: &SparkConnectCluster,
        who: &Identity,
    ) -> Result<Assignment, DedicatedError> {
        let name = claim_name(&cluster.name, &who.user);
        let key: ClaimKey = (cluster.namespace.clone(), name.clone());
        let deadline = tokio::time::Instant::now() + self.claim_wait;
        let changed = self.directory.claims_changed();
        let mut created = false;
        let mut confirmed = false;
        let mut _making = None;
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.directory.claim(&cluster.namespace, &name) {
                Some(claim) if !is_live(&claim) => {
                    self.remove_final(&claim).await;
                    // The claim this call made ended: the operator refused it. It counts the
                    // cluster's gateway claims exactly, and refuses those that pass the quota
                    // together (made by two replicas, or before this replica's store showed
                    // the others). An older claim that ended is replaced.
                    if created {
                        return Err(ended(&claim, cluster, spec));
                    }
                }
                Some(claim) => {
                    if created && !confirmed {
                        self.confirm_user_quota(&claim, who).await?;
                        confirmed = true;
                    }
                    let status = claim.status.clone().unwrap_or_default();
                    if status.phase == ClaimPhase::Bound
                        && let Some(server) = status.server.as_deref()
                    {
                        let server = self
                            .directory
                            .server(&cluster.namespace, server, spec.spec.server.port)
                            .ok_or_else(|| {
                                DedicatedError::Unavailable(format!(
                                    "server {server} of claim {name} has no address yet"
                                ))
                            })?;
                        return Ok(Assignment {
                            server,
                            token_secret: status.token_secret,
                            claim: key,
                        });
                    }
                }
                None if !created => {
                    _making = Some(self.reserve(cluster, spec, who, &key)?);
                    self.create(cluster, &name, who).await?;
                    created = true;
                }
                None => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let phase = self
                    .directory
                    .claim(&cluster.namespace, &name)
                    .and_then(|c| c.status.clone())
                    .map(|s| format!("{:?}", s.phase))
                    .unwrap_or_else(|| "not yet seen".into());
                return Err(DedicatedError::Unavailable(format!(
                    "claim {}/{name} was not bound within {:?} (phase {phase}); the pool may be empty",
                    cluster.namespace, self.claim_wait
                )));
            }
        }
    }

    /// Checks both quotas for a new claim `key` and, when they allow it, notes the claim as
    /// being made by this replica until the returned guard drops: checked and noted under one
    /// lock, so calls arriving together on this replica never pass a quota together. The
    /// counts are the live claims the store shows and the claims being made here, each once;
    /// `key` itself, when another call is making it, is not counted against itself.
    fn reserve(
        &self,
        cluster: &ClusterRef,
        spec: &SparkConnectCluster,
        who: &Identity,
        key: &ClaimKey,
    ) -> Result<Making<'_>, DedicatedError> {
        let mut making = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let user = user_key(&who.user);
        let mut for_cluster: BTreeSet<ClaimKey> = BTreeSet::new();
        let mut for_user: BTreeSet<ClaimKey> = BTreeSet::new();
        for claim in self.directory.claims().iter().filter(|c| is_live(c)) {
            let other = (claim.namespace().unwrap_or_default(), claim.name_any());
            if other.0 == cluster.namespace && claim.spec.cluster == cluster.name {
                for_cluster.insert(other.clone());
            }
            if claim.labels().get(GATEWAY_USER_LABEL) == Some(&user) {
                for_user.insert(other);
            }
        }
        for (other, (of_cluster, of_user)) in making.iter() {
            if of_cluster == cluster {
                for_cluster.insert(other.clone());
            }
            if *of_user == user {
                for_user.insert(other.clone());
            }
        }
        for_cluster.remove(key);
        for_user.remove(key);
        if for_cluster.len() >= dedicated_quota(spec) {
            return Err(cluster_quota(cluster, spec));
        }
        if for_user.len() >= self.max_per_user {
            return Err(self.user_quota(who));
        }
        let noted = !making.contains_key(key);
        if noted {
            making.insert(key.clone(), (cluster.clone(), user));
        }
        Ok(Making {
            making: &self.making,
            key: noted.then(|| key.clone()),
        })
    }

    fn user_quota(&self, who: &Identity) -> DedicatedError {
        DedicatedError::Quota {
            quota: "maxDedicatedServersPerUser",
            scope: format!("user {}", who.user),
            value: self.max_per_user,
        }
    }

    /// Checks a claim this call made against the per-user quota once the watch shows it; a
    /// claim past the quota is deleted and the call refused. Another replica
    /// making a claim of the same user at the same time reaches the same verdict on both.
    async fn confirm_user_quota(
        &self,
        claim: &SparkConnectClaim,
        who: &Identity,
    ) -> Result<(), DedicatedError> {
        let claims = self.directory.claims();
        let arrival = |c: &SparkConnectClaim| self.directory.arrival(c);
        if within_user_quota(claim, &claims, arrival, self.max_per_user) {
            return Ok(());
        }
        self.delete(claim, Release::OverQuota).await;
        Err(self.user_quota(who))
    }

    async fn create(
        &self,
        cluster: &ClusterRef,
        name: &str,
        who: &Identity,
    ) -> Result<(), DedicatedError> {
        let api: Api<SparkConnectClaim> =
            Api::namespaced(self.directory.client().clone(), &cluster.namespace);
        let spec_user: String = who
            .user
            .chars()
            .filter(|c| !c.is_control())
            .take(253)
            .collect();
        let claim: SparkConnectClaim = serde_json::from_value(json!({
            "apiVersion": "sparkconnect.dev/v1alpha1",
            "kind": "SparkConnectClaim",
            "metadata": {
                "name": name,
                "namespace": cluster.namespace,
                "labels": {
                    GATEWAY_USER_LABEL: user_key(&who.user),
                    CLUSTER_LABEL: cluster.name,
                    "app.kubernetes.io/managed-by": "spark-connect-gateway",
                },
                "annotations": {
                    GATEWAY_USER_ANNOTATION: who.user,
                    LAST_CALL_ANNOTATION: jiff::Timestamp::now().to_string(),
                },
            },
            "spec": {"cluster": cluster.name, "user": spec_user},
        }))
        .map_err(|e| DedicatedError::Unavailable(format!("building the claim failed: {e}")))?;
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                self.metrics
                    .dedicated_claims
                    .with_label_values(&["created"])
                    .inc();
                tracing::info!(claim = name, namespace = %cluster.namespace, user = %who.user, "claimed a dedicated server");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(DedicatedError::Unavailable(format!(
                "creating claim {}/{name} failed: {e}",
                cluster.namespace
            ))),
        }
    }

    /// Deletes a claim that ended (lost its server, failed), so the next call claims anew.
    async fn remove_final(&self, claim: &SparkConnectClaim) {
        self.delete(claim, Release::Ended).await;
    }

    async fn delete(&self, claim: &SparkConnectClaim, why: Release) {
        let (Some(namespace), Some(uid)) = (claim.namespace(), claim.uid()) else {
            return;
        };
        let api: Api<SparkConnectClaim> =
            Api::namespaced(self.directory.client().clone(), &namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: claim.resource_version().filter(|_| why.only_as_read()),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&claim.name_any(), &params).await {
            Ok(_) => {
                self.metrics
                    .dedicated_claims
                    .with_label_values(&[why.label()])
                    .inc();
                tracing::info!(claim = %claim.name_any(), %namespace, why = why.label(), "released a dedicated server");
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(claim = %claim.name_any(), error = %e, "releasing a claim failed")
            }
        }
    }

    /// A call to the claim's server starts.
    pub fn begin(self: &Arc<Self>, claim: &ClaimKey) {
        if let Ok(mut calls) = self.in_flight.lock() {
            *calls.entry(claim.clone()).or_default() += 1;
        }
        self.touch_if_stale(claim);
    }

    /// A call to the claim's server ended.
    pub fn end(self: &Arc<Self>, claim: &ClaimKey) {
        if let Ok(mut calls) = self.in_flight.lock()
            && let Some(n) = calls.get_mut(claim)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                calls.remove(claim);
            }
        }
        self.touch_if_stale(claim);
    }

    /// Writes the claim's last-call time when this replica's last write is older than a
    /// quarter of the idle timeout (in the background: calls never wait for it).
    fn touch_if_stale(self: &Arc<Self>, claim: &ClaimKey) {
        let due = match self.touched.lock() {
            Ok(mut touched) => match touched.get(claim) {
                Some((at, every)) if at.elapsed() < *every => false,
                _ => {
                    touched.insert(claim.clone(), (Instant::now(), self.touch_interval(claim)));
                    true
                }
            },
            Err(_) => false,
        };
        if !due {
            return;
        }
        let this = self.clone();
        let claim = claim.clone();
        tokio::spawn(async move {
            let api: Api<SparkConnectClaim> =
                Api::namespaced(this.directory.client().clone(), &claim.0);
            let patch = json!({"metadata": {"annotations": {LAST_CALL_ANNOTATION: jiff::Timestamp::now().to_string()}}});
            if let Err(e) = api
                .patch(&claim.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(claim = %claim.1, error = %e, "recording a claim's last call failed");
            }
        });
    }

    /// How often the last-call time of `claim` is written: a quarter of its cluster's idle
    /// timeout (read from the stores only when a write is made, never on every call).
    fn touch_interval(&self, claim: &ClaimKey) -> Duration {
        let cluster = self.directory.claim(&claim.0, &claim.1).and_then(|c| {
            self.directory.cluster(&ClusterRef {
                namespace: claim.0.clone(),
                name: c.spec.cluster.clone(),
            })
        });
        (idle_timeout(cluster.as_deref()) / 4).max(Duration::from_secs(2))
    }

    /// One pass of the janitor: refreshes claims with calls in flight here, and releases claims
    /// idle past their cluster's timeout with no call in flight here.
    pub async fn sweep(self: &Arc<Self>) {
        let busy: Vec<ClaimKey> = self
            .in_flight
            .lock()
            .map(|calls| calls.keys().cloned().collect())
            .unwrap_or_default();
        for claim in &busy {
            self.touch_if_stale(claim);
        }
        let now = jiff::Timestamp::now();
        for claim in self.directory.claims() {
            let key: ClaimKey = (claim.namespace().unwrap_or_default(), claim.name_any());
            if busy.contains(&key) {
                continue;
            }
            if !is_live(&claim) {
                self.delete(&claim, Release::Ended).await;
                continue;
            }
            let cluster = self.directory.cluster(&ClusterRef {
                namespace: key.0.clone(),
                name: claim.spec.cluster.clone(),
            });
            let timeout = idle_timeout(cluster.as_deref());
            let idle = last_call(&claim)
                .and_then(|at| now.duration_since(at).try_into().ok())
                .unwrap_or(Duration::ZERO);
            if idle >= timeout {
                self.delete(&claim, Release::Idle).await;
                if let Ok(mut touched) = self.touched.lock() {
                    touched.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Identity {
        Identity {
            user: user.into(),
            groups: Vec::new(),
            namespace_claim: None,
        }
    }

    fn cluster(name: &str, quota: i32) -> (ClusterRef, SparkConnectCluster) {
        let mut spec = crate::test_support::cluster();
        spec.spec.gateway.max_dedicated_servers = quota;
        let at = ClusterRef {
            namespace: "data".into(),
            name: name.into(),
        };
        (at, spec)
    }

    fn key(at: &ClusterRef, user: &str) -> ClaimKey {
        (at.namespace.clone(), claim_name(&at.name, user))
    }

    /// A replica whose watches never answer (its store stays empty), `max_per_user` per user.
    fn replica(max_per_user: usize) -> (Dedicated, crate::test_support::MockApiserver) {
        let (service, apiserver) = tower_test::mock::pair();
        let client = kube::Client::new(service, "data");
        let (directory, _watches) = Directory::start(client, None);
        let metrics = GatewayMetrics::new().expect("metrics");
        let dedicated = Dedicated::new(directory, max_per_user, Duration::from_secs(5), metrics);
        (dedicated, apiserver)
    }

    fn ended_claim(reason: &str, message: &str) -> SparkConnectClaim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
            "metadata": {"name": "science-alice", "namespace": "data"},
            "spec": {"cluster": "science"},
            "status": {"phase": "Failed", "conditions": [{"type": "Bound", "status": "False",
                "reason": reason, "message": message,
                "lastTransitionTime": "2026-11-28T12:00:00Z"}]}}))
        .expect("a claim")
    }

    #[test]
    fn a_claim_the_operator_refused_for_the_quota_is_the_replicas_own_quota_refusal() {
        let (at, spec) = cluster("science", 3);
        let refused = ended_claim(DEDICATED_QUOTA_REACHED, "quota ... is used up");
        assert_eq!(
            ended(&refused, &at, &spec).to_string(),
            "quota gateway.maxDedicatedServers = 3 (cluster data/science) is used up: release a server or ask for a larger quota"
        );
        let full = ended_claim(
            "TooManyWaitingClaims",
            "30 claims already wait for this cluster",
        );
        assert_eq!(
            ended(&full, &at, &spec),
            DedicatedError::Unavailable(
                "claim data/science-alice ended (Failed): 30 claims already wait for this cluster"
                    .into()
            )
        );
    }

    fn assert_refused_by(reserved: Result<Making<'_>, DedicatedError>, quota: &str, value: usize) {
        match reserved {
            Err(DedicatedError::Quota {
                quota: q, value: v, ..
            }) => {
                assert_eq!((q, v), (quota, value));
            }
            Err(other) => panic!("refused by {other}, not by quota {quota}"),
            Ok(_) => panic!("not refused by quota {quota}"),
        }
    }

    #[tokio::test]
    async fn users_arriving_together_on_one_replica_never_pass_the_clusters_quota_together() {
        let (replica, _apiserver) = replica(10);
        let (at, spec) = cluster("science", 1);
        let alice = replica
            .reserve(&at, &spec, &who("alice"), &key(&at, "alice"))
            .expect("alice is first");
        let refused = replica.reserve(&at, &spec, &who("bob"), &key(&at, "bob"));
        assert_refused_by(refused, "gateway.maxDedicatedServers", 1);
        // Alice's second session, at the same moment, is the same claim: not counted twice.
        let again = replica.reserve(&at, &spec, &who("alice"), &key(&at, "alice"));
        assert!(again.is_ok(), "{:?}", again.err());
        drop(again);
        // Once alice's claim is no longer being made here (made and seen, or failed), bob may.
        drop(alice);
        assert!(
            replica
                .reserve(&at, &spec, &who("bob"), &key(&at, "bob"))
                .is_ok()
        );
    }

    /// A live gateway claim of `user` on `cluster`, with `uid`.
    fn gateway_claim(uid: &str, user: &str, cluster: &str) -> Arc<SparkConnectClaim> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
                "metadata": {"name": claim_name(cluster, user), "namespace": "data", "uid": uid,
                    "labels": {GATEWAY_USER_LABEL: user_key(user)}},
                "spec": {"cluster": cluster}
            }))
            .expect("a claim"),
        )
    }

    #[test]
    fn replicas_making_one_users_claims_at_once_agree_on_which_pass_the_per_user_quota() {
        // Two replicas each made one of carol's claims at the same moment, with a per-user
        // quota of 1. The watch showed claim "x" first on both replicas.
        let x = gateway_claim("x", "carol", "a");
        let y = gateway_claim("y", "carol", "b");
        let order = |c: &SparkConnectClaim| match c.uid().as_deref() {
            Some("x") => Some(1),
            Some("y") => Some(2),
            _ => None,
        };
        // The replica that made "x" checks it before its store shows "y", or after: it passes.
        assert!(within_user_quota(&x, std::slice::from_ref(&x), order, 1));
        assert!(within_user_quota(&x, &[x.clone(), y.clone()], order, 1));
        // The replica that made "y" sees "x" first: "y" is past the quota.
        assert!(!within_user_quota(&y, &[x.clone(), y.clone()], order, 1));
        assert!(within_user_quota(&y, &[x.clone(), y.clone()], order, 2));
    }

    #[test]
    fn only_the_users_live_claims_count_against_the_per_user_quota() {
        let mine = gateway_claim("mine", "carol", "c");
        let others = gateway_claim("others", "dave", "a");
        let mut ended = (*gateway_claim("ended", "carol", "b")).clone();
        ended.status = Some(crate::crd::SparkConnectClaimStatus {
            phase: ClaimPhase::Failed,
            ..Default::default()
        });
        let earlier = |c: &SparkConnectClaim| match c.uid().as_deref() {
            Some("mine") => Some(9),
            _ => Some(1),
        };
        let claims = [mine.clone(), others, Arc::new(ended)];
        assert!(within_user_quota(&mine, &claims, earlier, 1));
        // A claim the watch has not numbered counts as earlier.
        let unknown = gateway_claim("unknown", "carol", "d");
        let unnumbered =
            |c: &SparkConnectClaim| earlier(c).filter(|_| c.uid().as_deref() != Some("unknown"));
        assert!(!within_user_quota(
            &mine,
            &[mine.clone(), unknown],
            unnumbered,
            1
        ));
    }

    #[tokio::test]
    async fn one_user_on_many_clusters_at_once_never_passes_the_per_user_quota() {
        let (replica, _apiserver) = replica(2);
        let mut held = Vec::new();
        for name in ["a", "b"] {
            let (at, spec) = cluster(name, 10);
            held.push(
                replica
                    .reserve(&at, &spec, &who("carol"), &key(&at, "carol"))
                    .expect("within the per-user quota"),
            );
        }
        let (at, spec) = cluster("c", 10);
        let refused = replica.reserve(&at, &spec, &who("carol"), &key(&at, "carol"));
        assert_refused_by(refused, "maxDedicatedServersPerUser", 2);
        assert!(
            replica
                .reserve(&at, &spec, &who("dave"), &key(&at, "dave"))
                .is_ok(),
            "another user is not under carol's quota"
        );
    }
}
