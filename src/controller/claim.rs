//! The claim controller: puts each new claim in its cluster's line and serves the line at once
//! (binding is not part of any cluster reconcile), finishes a bind a crash interrupted, and
//! reports claims whose cluster does not exist. What happens to a bound claim later (lost,
//! expired) is the cluster reconcile's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::controlled_by;
use super::bind;
use super::claim_status::{finish_claim, ignore_gone};
use super::context::{Context, cluster_key, key_of};
use super::guard::{UNTIL_SYNCED, guarded};
use super::pool::allocator::{Arrival, Candidate, Cap, Refused};
use crate::builders::bind_ledger::{BindHolder, Entry};
use crate::builders::labels::{
    CLAIM_ANNOTATION, CLAIM_UID_ANNOTATION, CLUSTER_LABEL, GATEWAY_USER_LABEL, ServerState,
};
use crate::crd::{ClaimPhase, DEDICATED_QUOTA_REACHED, SparkConnectClaim, SparkConnectCluster};
use crate::error::Error;

const CONTROLLER: &str = "claim";
/// How often a waiting claim makes sure it is still in line.
const WAITING_RECHECK: Duration = Duration::from_secs(30);
/// How often a claim whose cluster does not exist looks again.
const CLUSTER_MISSING_RETRY: Duration = Duration::from_secs(10);

/// Reconciles one claim (guarded like every reconcile).
pub async fn reconcile(claim: Arc<SparkConnectClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .reconciles
        .with_label_values(&[CONTROLLER])
        .inc();
    let key = key_of(claim.as_ref());
    let result = guarded(&ctx.liveness, &key, reconcile_claim(&claim, &ctx)).await;
    if result.is_ok() {
        ctx.retries.succeeded(&key);
    }
    result
}

async fn reconcile_claim(claim: &SparkConnectClaim, ctx: &Context) -> Result<Action, Error> {
    if !ctx.stores.synced() {
        return Ok(Action::requeue(UNTIL_SYNCED));
    }
    let ns = claim
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = claim.name_any();
    let cluster_key = cluster_key(&ns, &claim.spec.cluster);
    let status = claim.status.clone().unwrap_or_default();
    let uid = claim
        .metadata
        .uid
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    if claim.metadata.deletion_timestamp.is_some() || status.phase.is_final() {
        ctx.allocator.forget_claim(&cluster_key, &name, uid);
        return Ok(Action::await_change());
    }
    let cluster = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&claim.spec.cluster).within(&ns))
        .filter(|c| c.metadata.deletion_timestamp.is_none());
    let Some(cluster) = cluster else {
        return cluster_missing(claim, ctx, status.server.is_some()).await;
    };
    if status.server.is_some() {
        return Ok(Action::await_change());
    }
    if finish_interrupted_bind(claim, &cluster, ctx, &cluster_key).await? {
        return Ok(Action::await_change());
    }
    let created = claim
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    tracing::debug!(claim = %name, "claim joins the line");
    if let Err(refused) = join_line(claim, &cluster, ctx, &cluster_key, uid, created) {
        refuse(claim, ctx, refused).await?;
        return Ok(Action::await_change());
    }
    bind::serve(ctx, &cluster_key).await;
    // A claim another task is binding right now is not waiting: it is not marked so.
    if ctx.allocator.in_line(&cluster_key, &name, uid) {
        mark_waiting(claim, ctx).await?;
    }
    if ctx.allocator.first_seen(&cluster_key, &name).is_some() {
        // Servers freeing up serve the line at once; this look is only a safety net.
        return Ok(Action::requeue(WAITING_RECHECK));
    }
    Ok(Action::await_change())
}

/// A server already stamped with this claim, or whose ledger entry names it (the operator
/// stopped between the two bind writes, or the status write failed), is the claim's: only the
/// claim's status is written. The claim is this very one, by uid: a namesake deleted before
/// it never hands on its server.
async fn finish_interrupted_bind(
    claim: &SparkConnectClaim,
    cluster: &SparkConnectCluster,
    ctx: &Context,
    cluster_key: &str,
) -> Result<bool, Error> {
    let (Some(uid), Some(claim_uid), Some(terms)) = (
        cluster.metadata.uid.as_deref(),
        claim.metadata.uid.as_deref(),
        ctx.allocator.terms(cluster_key),
    ) else {
        return Ok(false);
    };
    let name = claim.name_any();
    let this_claim = BindHolder::Claim {
        name: &name,
        uid: claim_uid,
    };
    let live_server = |p: &Pod| {
        p.namespace() == claim.namespace()
            && p.labels().get(CLUSTER_LABEL) == Some(&claim.spec.cluster)
            && controlled_by(p, uid)
            && p.metadata.deletion_timestamp.is_none()
    };
    let Some(ns) = claim.namespace() else {
        return Ok(false);
    };
    let cluster_name = claim.spec.cluster.as_str();
    // The bind ledger names the claim (looked up by its uid: a burst's claims each look)...
    let ledger = ctx.stores.ledger_view(&ns, cluster_name, uid);
    let held = ledger.held_by_claim(claim_uid).find_map(|(server, entry)| {
        let pod = entry_pod(ctx, &ns, server, entry)?;
        (live_server(&pod) && entry.holder() == this_claim).then_some(pod)
    });
    // ... or a server is stamped with it (its ledger entry lost with a deleted ledger).
    let server = held.or_else(|| {
        ctx.stores
            .pods
            .of_cluster(&ns, cluster_name)
            .into_iter()
            .find(|p| {
                live_server(p)
                    && ServerState::of(p) == ServerState::Claimed
                    && p.annotations().get(CLAIM_ANNOTATION) == Some(&name)
                    && p.annotations()
                        .get(CLAIM_UID_ANNOTATION)
                        .map(String::as_str)
                        == Some(claim_uid)
            })
    });
    let Some(server) = server else {
        return Ok(false);
    };
    let first_seen = ctx
        .allocator
        .first_seen(cluster_key, &name)
        .unwrap_or_else(Timestamp::now);
    ignore_gone(
        bind::write_bound(ctx, &terms, claim, &server.name_any(), first_seen)
            .await
            .map(|()| true),
    )?;
    ctx.allocator.forget_claim(cluster_key, &name, claim_uid);
    Ok(true)
}

/// Puts the claim in its cluster's line, unless `hotPool.maxWaitingClaims` claims wait beyond
/// the idle servers already; a gateway claim is under the cluster's
/// `gateway.maxDedicatedServers`, counted with the live gateway claims that hold a server (by
/// their status or, before it is written, by the ledger entry that names them), are being bound
/// or wait in line.
fn join_line(
    claim: &SparkConnectClaim,
    cluster: &SparkConnectCluster,
    ctx: &Context,
    cluster_key: &str,
    uid: &str,
    created: Timestamp,
) -> Result<(), Refused> {
    let name = claim.name_any();
    let arrival = Arrival {
        claim: &name,
        uid,
        created,
        now: Timestamp::now(),
    };
    let live = claim.labels().contains_key(GATEWAY_USER_LABEL).then(|| {
        live_gateway_claims(
            ctx,
            &claim.namespace().unwrap_or_default(),
            &claim.spec.cluster,
        )
    });
    let join = |idle: &[Candidate]| match &live {
        None => ctx.allocator.enqueue(cluster_key, arrival, idle),
        Some(live) => {
            let cap = Cap {
                limit: usize::try_from(cluster.spec.gateway.max_dedicated_servers).unwrap_or(0),
                live,
            };
            ctx.allocator
                .enqueue_capped(cluster_key, arrival, idle, cap)
        }
    };
    // The idle servers are read only when the line looks full: a burst's claims each read
    // none while there is room.
    match join(&[]) {
        Err(Refused::QueueFull { .. }) => {
            let idle = ctx
                .allocator
                .terms(cluster_key)
                .map(|terms| bind::candidates(ctx, &terms).0)
                .unwrap_or_default();
            join(&idle)
        }
        joined => joined,
    }
}

/// Fails a claim that could not join the line, with an Event.
async fn refuse(claim: &SparkConnectClaim, ctx: &Context, refused: Refused) -> Result<(), Error> {
    let (reason, message) = match refused {
        Refused::QueueFull { max_waiting } => (
            "TooManyWaitingClaims",
            format!(
                "{max_waiting} claims already wait for this cluster (hotPool.maxWaitingClaims)"
            ),
        ),
        Refused::CapReached { limit } => (
            DEDICATED_QUOTA_REACHED,
            format!(
                "quota gateway.maxDedicatedServers = {limit} (cluster {}/{}) is used up: release a server or ask for a larger quota",
                claim.namespace().unwrap_or_default(),
                claim.spec.cluster
            ),
        ),
    };
    let result = finish_claim(
        ctx,
        claim,
        ClaimPhase::Failed,
        reason,
        &message,
        Timestamp::now(),
    )
    .await;
    if ignore_gone(result)? {
        ctx.metrics.claims.with_label_values(&["failed"]).inc();
        ctx.event(claim, EventType::Warning, reason, &message);
    }
    Ok(())
}

/// The live gateway claims of a cluster, each with whether it holds a server: bound, or named
/// in the bind ledger while its status is not written yet.
fn live_gateway_claims(ctx: &Context, ns: &str, cluster: &str) -> BTreeMap<String, bool> {
    let mut live: BTreeMap<String, bool> = ctx
        .stores
        .claims
        .of_cluster(ns, cluster)
        .into_iter()
        .filter(|c| {
            c.labels().contains_key(GATEWAY_USER_LABEL)
                && c.metadata.deletion_timestamp.is_none()
                && !c.status.as_ref().is_some_and(|s| s.phase.is_final())
        })
        .map(|c| {
            let bound = c.status.as_ref().is_some_and(|s| s.server.is_some());
            (c.name_any(), bound)
        })
        .collect();
    let cluster_uid = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(cluster).within(ns))
        .and_then(|c| c.metadata.uid.clone())
        .unwrap_or_default();
    // Or the bind ledger names them, on servers the store shows (before their status says so).
    let ledger = ctx.stores.ledger_view(ns, cluster, &cluster_uid);
    for (server, entry) in ledger.entries() {
        let Some(holds) = entry.holder().claim().and_then(|name| live.get_mut(name)) else {
            continue;
        };
        if entry_pod(ctx, ns, server, entry).is_some() {
            *holds = true;
        }
    }
    live
}

/// The pod of ledger entry `entry` (of server `server` in `ns`), if the store shows the very pod
/// it was written for.
fn entry_pod(ctx: &Context, ns: &str, server: &str, entry: &Entry) -> Option<Arc<Pod>> {
    let pod = ctx.stores.pods.get(&ObjectRef::new(server).within(ns))?;
    (pod.metadata.uid.as_deref() == Some(entry.pod.as_str())).then_some(pod)
}

/// A waiting claim says so once; its place in line is not rewritten as others arrive.
async fn mark_waiting(claim: &SparkConnectClaim, ctx: &Context) -> Result<(), Error> {
    // Decided on the copy this reconcile read: if the claim was bound since, that stands.
    let written = finish_claim(
        ctx,
        claim,
        ClaimPhase::Pending,
        "WaitingForServer",
        "waiting for an idle server; the pool is growing",
        Timestamp::now(),
    )
    .await;
    ignore_gone(written).map(drop)
}

/// No such cluster: a bound claim is Lost; a new one waits (the cluster may come).
async fn cluster_missing(
    claim: &SparkConnectClaim,
    ctx: &Context,
    bound: bool,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let (phase, reason) = if bound {
        (ClaimPhase::Lost, "ClusterDeleted")
    } else {
        (ClaimPhase::Pending, "ClusterNotFound")
    };
    let message = format!(
        "SparkConnectCluster {} does not exist in namespace {ns}",
        claim.spec.cluster
    );
    let wrote = finish_claim(ctx, claim, phase, reason, &message, Timestamp::now()).await;
    if matches!(wrote, Ok(true)) {
        ctx.event(claim, EventType::Warning, reason, &message);
    }
    ignore_gone(wrote)?;
    Ok(if bound {
        Action::await_change()
    } else {
        Action::requeue(CLUSTER_MISSING_RETRY)
    })
}

/// Retry policy of the claim controller: per-claim delays that grow with each failure.
pub fn error_policy(claim: Arc<SparkConnectClaim>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(claim.as_ref());
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.metric_label()])
        .inc();
    let delay = ctx.retries.failed(&key);
    tracing::warn!(claim = %key, %error, retry_in = ?delay, "claim reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::pool::allocator::PoolTerms;
    use crate::controller::stores::Held;
    use crate::probe::health::Verdict;
    use crate::test_support::{
        MockApiserver, answer_next_with_conflict, arrival, candidate, context_over, idle_server,
        pool_terms,
    };
    use serde_json::json;

    const NS: &str = "ns";
    const KEY: &str = "ns/c";

    fn cluster() -> SparkConnectCluster {
        serde_json::from_value(json!({"apiVersion": "sparkconnect.dev/v1alpha1",
            "kind": "SparkConnectCluster",
            "metadata": {"name": "c", "namespace": NS, "uid": "cluster-uid"},
            "spec": {"image": "apache/spark:4.3.0"}}))
        .unwrap()
    }

    fn claim(name: &str) -> SparkConnectClaim {
        serde_json::from_value(json!({"apiVersion": "sparkconnect.dev/v1alpha1",
            "kind": "SparkConnectClaim",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                         "resourceVersion": "41", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"cluster": "c"}}))
        .unwrap()
    }

    /// A context whose stores hold the cluster and `claim`, with the cluster's pool terms
    /// published (and no idle server).
    fn context_with(claim: &SparkConnectClaim) -> (Arc<Context>, MockApiserver) {
        let held = Held {
            clusters: vec![cluster()],
            claims: vec![claim.clone()],
            ..Held::default()
        };
        let (ctx, handle) = context_over(held, NS);
        ctx.allocator.publish(KEY, pool_terms());
        (ctx, handle)
    }

    #[tokio::test]
    async fn a_claim_another_task_is_binding_is_not_marked_waiting() {
        let mine = claim("mine");
        let (ctx, _apiserver) = context_with(&mine);
        // Another task's serve took the claim out of line and is writing its bind.
        let now = Timestamp::now();
        ctx.allocator
            .enqueue(KEY, arrival("mine", "uid-mine", now, now), &[])
            .unwrap();
        let taken = ctx.allocator.assign(
            KEY,
            &[candidate("s1", now)],
            |_| true,
            std::time::Instant::now(),
        );
        assert_eq!(taken.len(), 1);
        // Any request would wait for an answer the mock never gives: returning proves none.
        let action = tokio::time::timeout(Duration::from_secs(10), reconcile_claim(&mine, &ctx))
            .await
            .expect("the reconcile makes no request")
            .unwrap();
        assert_eq!(action, Action::requeue(WAITING_RECHECK));
    }

    #[tokio::test]
    async fn a_waiting_claim_is_marked_only_if_unchanged_since_it_was_read() {
        let mine = claim("mine");
        let (ctx, apiserver) = context_with(&mine);
        // Bound meanwhile: the apiserver refuses a write made on the old copy.
        let answered = tokio::spawn(answer_next_with_conflict(apiserver));
        let action = tokio::time::timeout(Duration::from_secs(10), reconcile_claim(&mine, &ctx))
            .await
            .expect("the reconcile ends")
            .expect("a conflict is not an error");
        assert_eq!(action, Action::requeue(WAITING_RECHECK));
        let (path, body) = answered.await.unwrap();
        assert!(path.ends_with("/sparkconnectclaims/mine/status"), "{path}");
        assert_eq!(body["metadata"]["resourceVersion"], "41", "{body}");
        assert_eq!(body["status"]["phase"], "Pending", "{body}");
    }

    /// Joins `newcomer` to a line of one waiting claim, under a limit of one, with `idle`
    /// healthy idle servers in the stores.
    fn join_behind_one(idle: &[&str]) -> Result<(), Refused> {
        let newcomer = claim("newcomer");
        let created = Timestamp::from_second(1_800_000_000).unwrap();
        let held = Held {
            clusters: vec![cluster()],
            claims: vec![claim("first"), newcomer.clone()],
            pods: idle.iter().map(|name| idle_server(name, created)).collect(),
            ..Held::default()
        };
        let (ctx, _apiserver) = context_over(held, NS);
        for name in idle {
            ctx.prober
                .book()
                .seed(&format!("uid-{name}"), Verdict::Healthy);
        }
        ctx.allocator.publish(
            KEY,
            PoolTerms {
                max_waiting: 1,
                ..pool_terms()
            },
        );
        ctx.allocator
            .enqueue(KEY, arrival("first", "uid-first", created, created), &[])
            .unwrap();
        join_line(&newcomer, &cluster(), &ctx, KEY, "uid-newcomer", created)
    }

    #[tokio::test]
    async fn a_claim_past_the_waiting_limit_joins_while_an_idle_server_is_there_for_it() {
        assert_eq!(join_behind_one(&["s1"]), Ok(()));
        assert_eq!(
            join_behind_one(&[]),
            Err(Refused::QueueFull { max_waiting: 1 })
        );
    }

    /// A claim the gateway made for `name`, bound to `server` when given.
    fn gateway_claim(name: &str, server: Option<&str>) -> SparkConnectClaim {
        let mut claim = claim(name);
        claim
            .labels_mut()
            .insert(GATEWAY_USER_LABEL.into(), format!("user-{name}"));
        if let Some(server) = server {
            claim.status = Some(
                serde_json::from_value(json!({
                "phase": "Bound", "server": server}))
                .unwrap(),
            );
        }
        claim
    }

    fn server_pod(name: &str) -> Pod {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": format!("pod-uid-{name}"),
                         "labels": {CLUSTER_LABEL: "c", crate::builders::labels::SERVER_LABEL: name}}}))
        .unwrap()
    }

    /// Stores with the cluster (its gateway quota `quota`), a bound gateway claim, a gateway
    /// claim whose ledger entry is made but whose status is not written, a bound claim made
    /// with kubectl, an entry naming a gateway claim for an earlier pod of its server's name,
    /// and `newcomer`.
    fn quota_world(quota: i32, newcomer: &SparkConnectClaim) -> (Arc<Context>, MockApiserver) {
        let mut cluster = cluster();
        cluster.spec.gateway.max_dedicated_servers = quota;
        let (s2, s4) = (server_pod("s2"), server_pod("s4"));
        let taken = BindHolder::Claim {
            name: "in-ledger",
            uid: "uid-in-ledger",
        };
        let stale_for = BindHolder::Claim {
            name: "named-by-a-stale-entry",
            uid: "uid-named-by-a-stale-entry",
        };
        let mut earlier_s4 = s4.clone();
        earlier_s4.metadata.uid = Some("pod-uid-earlier".into());
        let entry = |pod: &Pod, holder| {
            let entry = crate::builders::bind_ledger::Entry::new(pod, holder).unwrap();
            (pod.name_any(), entry.encode())
        };
        let data = BTreeMap::from([entry(&s2, taken), entry(&earlier_s4, stale_for)]);
        let ledger = crate::builders::bind_ledger::ledger("c", "cluster-uid", NS, data);
        let mut kubectl = claim("kubectl");
        kubectl.status =
            Some(serde_json::from_value(json!({"phase": "Bound", "server": "s3"})).unwrap());
        let held = Held {
            clusters: vec![cluster],
            claims: vec![
                gateway_claim("bound", Some("s1")),
                gateway_claim("in-ledger", None),
                gateway_claim("named-by-a-stale-entry", None),
                kubectl,
                newcomer.clone(),
            ],
            pods: vec![s2, s4],
            ledgers: vec![ledger],
            ..Held::default()
        };
        let (ctx, handle) = context_over(held, NS);
        ctx.allocator.publish(KEY, pool_terms());
        (ctx, handle)
    }

    /// Reconciles a new gateway claim under a quota of `quota` in [`quota_world`]; returns the
    /// context and the path and body of the one write it makes (answered with a conflict).
    async fn newcomer_under(quota: i32) -> (Arc<Context>, String, serde_json::Value) {
        let newcomer = gateway_claim("newcomer", None);
        let (ctx, apiserver) = quota_world(quota, &newcomer);
        let answered = tokio::spawn(answer_next_with_conflict(apiserver));
        tokio::time::timeout(Duration::from_secs(10), reconcile_claim(&newcomer, &ctx))
            .await
            .expect("the reconcile ends")
            .expect("reported, not an error");
        let (path, body) = answered.await.unwrap();
        (ctx, path, body)
    }

    #[tokio::test]
    async fn a_gateway_claim_past_its_clusters_quota_fails_and_says_why() {
        // Holding: "bound" by its status, "in-ledger" by its ledger entry; the stale entry and the
        // kubectl claim do not count, nor does the waiting "named-by-a-stale-entry" (not in
        // line).
        let (ctx, path, body) = newcomer_under(2).await;
        assert!(
            path.ends_with("/sparkconnectclaims/newcomer/status"),
            "{path}"
        );
        assert_eq!(body["status"]["phase"], "Failed", "{body}");
        let condition = &body["status"]["conditions"][0];
        assert_eq!(condition["reason"], DEDICATED_QUOTA_REACHED, "{body}");
        let message = condition["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("gateway.maxDedicatedServers = 2 (cluster ns/c)"),
            "{message}"
        );
        assert_eq!(ctx.allocator.waiting(KEY), 0);
    }

    #[tokio::test]
    async fn a_gateway_claim_within_its_clusters_quota_joins_the_line() {
        let (ctx, _, body) = newcomer_under(3).await;
        assert_eq!(body["status"]["phase"], "Pending", "{body}");
        assert_eq!(ctx.allocator.waiting(KEY), 1);
    }

    /// Reconciles claim "mine" in stores holding the cluster, the claim, `pods` and `ledger`;
    /// returns the path and body of its first write (answered as done).
    async fn first_write_of_mine(
        pods: Vec<Pod>,
        ledger: Option<k8s_openapi::api::core::v1::ConfigMap>,
    ) -> (String, serde_json::Value) {
        let mine = claim("mine");
        let held = Held {
            clusters: vec![cluster()],
            claims: vec![mine.clone()],
            pods,
            ledgers: ledger.into_iter().collect(),
            ..Held::default()
        };
        let (ctx, mut apiserver) = context_over(held, NS);
        ctx.allocator.publish(KEY, pool_terms());
        let reply = serde_json::to_value(&mine).unwrap();
        let answered = tokio::spawn(async move {
            let (request, send) = apiserver.next_request().await.expect("a write");
            let path = request.uri().path().to_string();
            let body: serde_json::Value = crate::test_support::request_json(request).await;
            crate::test_support::respond_json(send, &reply);
            (path, body)
        });
        tokio::time::timeout(Duration::from_secs(10), reconcile_claim(&mine, &ctx))
            .await
            .expect("the reconcile ends")
            .expect("no error");
        answered.await.unwrap()
    }

    /// The ledger of cluster "c" handing `server` to the claim `name` with uid `uid`.
    fn ledger_naming(server: &Pod, name: &str, uid: &str) -> k8s_openapi::api::core::v1::ConfigMap {
        let holder = BindHolder::Claim { name, uid };
        let entry = crate::builders::bind_ledger::Entry::new(server, holder).unwrap();
        let data = BTreeMap::from([(server.name_any(), entry.encode())]);
        crate::builders::bind_ledger::ledger("c", "cluster-uid", NS, data)
    }

    #[tokio::test]
    async fn a_claim_its_clusters_ledger_names_is_bound_to_that_server_without_joining_the_line() {
        let now = Timestamp::now();
        let (s1, s2) = (idle_server("s1", now), idle_server("s2", now));
        let ledger = ledger_naming(&s2, "mine", "uid-mine");
        let (path, body) = first_write_of_mine(vec![s1, s2], Some(ledger)).await;
        assert!(path.ends_with("/sparkconnectclaims/mine/status"), "{path}");
        assert_eq!(body["status"]["phase"], "Bound", "{body}");
        assert_eq!(body["status"]["server"], "s2", "{body}");
    }

    #[tokio::test]
    async fn a_claim_whose_stamped_server_lost_its_ledger_entry_is_bound_to_it() {
        let mut stamped = idle_server("s1", Timestamp::now());
        stamped.labels_mut().insert(
            crate::builders::labels::STATE_LABEL.into(),
            "claimed".into(),
        );
        stamped.annotations_mut().extend([
            (CLAIM_ANNOTATION.to_string(), "mine".to_string()),
            (CLAIM_UID_ANNOTATION.to_string(), "uid-mine".to_string()),
        ]);
        let (path, body) = first_write_of_mine(vec![stamped], None).await;
        assert!(path.ends_with("/sparkconnectclaims/mine/status"), "{path}");
        assert_eq!(body["status"]["phase"], "Bound", "{body}");
        assert_eq!(body["status"]["server"], "s1", "{body}");
    }

    #[tokio::test]
    async fn an_entry_for_a_namesake_claim_or_an_earlier_pod_binds_nothing() {
        let now = Timestamp::now();
        let s1 = idle_server("s1", now);
        let namesake = ledger_naming(&s1, "mine", "uid-of-a-deleted-mine");
        let mut earlier = s1.clone();
        earlier.metadata.uid = Some("uid-of-an-earlier-s1".into());
        let earlier_pod = ledger_naming(&earlier, "mine", "uid-mine");
        for ledger in [namesake, earlier_pod] {
            let (path, body) = first_write_of_mine(vec![s1.clone()], Some(ledger)).await;
            assert!(path.ends_with("/sparkconnectclaims/mine/status"), "{path}");
            assert_eq!(body["status"]["phase"], "Pending", "waits in line: {body}");
        }
    }
}
