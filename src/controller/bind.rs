//! Binding: makes the allocator's pairings real. One serve at a time per cluster pairs every
//! claim in line and takes all their servers in one write of the cluster's bind ledger
//! (conditional on the version read, so two leaders or a racing scale-down can never give one
//! server twice); then each claim's status says Bound, in parallel, bounded. A claim waits for
//! at most the ledger write before its own, and the writes of a burst of claims are one per
//! claim plus a few for the ledger. The server pod is stamped with its claim after the burst
//! (see `cluster::act`). A taken server puts the claim back at the head of the line; a claim
//! whose status is refused fails alone. Events never sit between a claim and its bind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::{controlled_by, status_patch};
use super::claim_status::{bound_status, finish_claim};
use super::context::Context;
use super::ledger::{Ask, LedgerOf, LedgerTurn, Take};
use super::pool::allocator::{Assignment, Candidate, PoolTerms};
use crate::builders::bind_ledger::BindHolder;
use crate::builders::labels::{
    ROLE_LABEL, SERVER_LABEL, SPEC_HASH_LABEL, ServerRole, ServerState, endpoint,
    server_token_secret_name,
};
use crate::crd::{ClaimPhase, SparkConnectClaim};
use crate::error::Error;
use crate::probe::health::Verdict;

/// Bind writes in flight at once per serving round (the apiserver takes hundreds of parallel
/// writes without slowing down much: see the write floor in `make bench`).
const CONCURRENCY: usize = 128;
/// Rounds a serve makes while conflicts put claims back in line.
const ROUNDS: usize = 4;

/// What became of one pairing.
enum Outcome {
    /// Both writes made.
    Bound,
    /// The server is not free: the ledger hands it to someone else (another claim, another
    /// leader), or its pod is gone or was replaced since it was read.
    ServerTaken,
    /// The claim was deleted meanwhile; `server_taken` says whether its ledger entry was made.
    ClaimGone { server_taken: bool },
    /// The apiserver refused the ledger write (e.g. an admission rule, or a ledger grown too
    /// large): the claims of that write fail with its reason.
    Refused(String),
    /// A transient error before the server was taken; the claim goes back in line.
    Failed(String),
    /// The server was taken but the claim's status could not be written: the claim's next
    /// reconcile finds the ledger entry that names it and finishes the bind.
    Unreported(Error),
}

/// Serves the line of cluster `key` until it is empty, no server is free, or conflicts stop.
pub async fn serve(ctx: &Context, key: &str) {
    for _ in 0..ROUNDS {
        let Some(terms) = ctx.allocator.terms(key) else {
            return;
        };
        // One serve at a time writes the cluster's ledger: whoever waited for the turn pairs
        // every claim in line by then, and takes all their servers in one write.
        let mut turn = ctx.ledgers.turn(key).await;
        // The turn before this one paired every claim in line by then: in a burst, most
        // claims find nothing left to pair and need not read the servers.
        if ctx.allocator.waiting(key) == 0 {
            return;
        }
        let (candidates, idle) = candidates(ctx, &terms);
        let assignments = ctx.allocator.assign(
            key,
            &candidates,
            |server| idle.contains(server),
            Instant::now(),
        );
        tracing::debug!(
            cluster = key,
            idle = idle.len(),
            candidates = candidates.len(),
            assigned = assignments.len(),
            waiting = ctx.allocator.waiting(key),
            "serving the line"
        );
        if assignments.is_empty() {
            return;
        }
        let _under_way = ctx.binds.begin();
        let taken = take_servers(ctx, key, &terms, &mut turn, &assignments).await;
        drop(turn);
        let results: Vec<(Assignment, Outcome)> =
            futures::stream::iter(assignments.into_iter().zip(taken))
                .map(|(a, taken)| async {
                    let outcome = match taken {
                        Taken::Yes(claim) => report_bound(ctx, &terms, &a, &claim).await,
                        Taken::No(outcome) => outcome,
                    };
                    (a, outcome)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut conflict = false;
        for (assignment, outcome) in results {
            conflict |= settle(ctx, key, &terms, &assignment, outcome).await;
        }
        if !conflict {
            return;
        }
    }
}

/// Serves the line of `key` in a task of its own.
pub fn serve_in_background(ctx: &Context, key: &str) {
    if let Some(ctx) = ctx.me() {
        let key = key.to_string();
        tokio::spawn(async move { serve(&ctx, &key).await });
    }
}

/// Records what a pairing came to; returns whether the claim went back in line after a
/// conflict (worth another round).
async fn settle(
    ctx: &Context,
    key: &str,
    terms: &PoolTerms,
    assignment: &Assignment,
    outcome: Outcome,
) -> bool {
    match outcome {
        Outcome::Bound => {
            ctx.allocator
                .forget_claim(key, &assignment.claim, &assignment.claim_uid);
            false
        }
        Outcome::ServerTaken => {
            // Whatever took it (another leader, an entry this process has not seen yet), the server is
            // not tried again while the store shows it idle.
            ctx.allocator.undo(key, assignment, true);
            ctx.allocator.withhold(key, &assignment.server.name);
            true
        }
        Outcome::ClaimGone { server_taken } => {
            // A taken server now names a claim that is gone: the cluster retires it.
            if !server_taken {
                ctx.allocator.undo(key, assignment, false);
            }
            ctx.allocator
                .forget_claim(key, &assignment.claim, &assignment.claim_uid);
            false
        }
        Outcome::Refused(message) => {
            ctx.allocator.undo(key, assignment, false);
            ctx.allocator
                .forget_claim(key, &assignment.claim, &assignment.claim_uid);
            fail_claim(ctx, terms, &assignment.claim, &message).await;
            false
        }
        Outcome::Failed(error) => {
            tracing::warn!(claim = %assignment.claim, %error, "binding failed; the claim waits");
            ctx.allocator.undo(key, assignment, true);
            false
        }
        Outcome::Unreported(e) => {
            tracing::warn!(claim = %assignment.claim, error = %e, "server taken, claim status not written; the claim's next reconcile finishes the bind");
            false
        }
    }
}

async fn fail_claim(ctx: &Context, terms: &PoolTerms, name: &str, message: &str) {
    let Some(claim) = claim(ctx, terms, name) else {
        return;
    };
    let message = format!("cannot bind: {message}");
    let result = finish_claim(
        ctx,
        &claim,
        ClaimPhase::Failed,
        "BindRefused",
        &message,
        Timestamp::now(),
    )
    .await;
    match result {
        Ok(true) => {
            ctx.metrics.claims.with_label_values(&["failed"]).inc();
            ctx.event(claim.as_ref(), EventType::Warning, "BindRefused", &message);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(claim = %name, error = %e, "reporting a refused bind failed"),
    }
}

fn claim(ctx: &Context, terms: &PoolTerms, name: &str) -> Option<Arc<SparkConnectClaim>> {
    ctx.stores
        .claims
        .get(&ObjectRef::new(name).within(&terms.namespace))
        .filter(|c| c.metadata.deletion_timestamp.is_none())
}

/// Idle, healthy, current servers of the cluster as the store shows them, and the names of all
/// the servers the store shows idle.
pub fn candidates(ctx: &Context, terms: &PoolTerms) -> (Vec<Candidate>, BTreeSet<String>) {
    let book = ctx.prober.book();
    let ledger = ctx
        .stores
        .ledger_view(&terms.namespace, &terms.cluster, &terms.cluster_uid);
    let held = |pod: &Pod| ledger.entry_of(pod).is_some();
    let mut candidates = Vec::new();
    let mut idle = BTreeSet::new();
    for pod in ctx.stores.pods.of_cluster(&terms.namespace, &terms.cluster) {
        let labels = pod.labels();
        let name = pod.name_any();
        // The index gives the cluster's namespace and label; the rest says it is a server.
        let ours = labels.get(SERVER_LABEL) == Some(&name)
            && controlled_by(pod.as_ref(), &terms.cluster_uid)
            && pod.metadata.deletion_timestamp.is_none();
        if !ours || ServerState::of(&pod) != ServerState::Idle {
            continue;
        }
        idle.insert(name.clone());
        if held(&pod) {
            continue;
        }
        let current = labels.get(SPEC_HASH_LABEL) == Some(&terms.server_hash);
        let pool_role = !terms.token_mode
            || ServerRole::from_label(labels.get(ROLE_LABEL).map(String::as_str))
                == ServerRole::Pool;
        let healthy = pod
            .uid()
            .is_some_and(|uid| book.get(&uid).verdict == Verdict::Healthy);
        if let (true, true, true, Some(uid), Some(created)) = (
            current,
            pool_role,
            healthy,
            pod.uid(),
            pod.metadata.creation_timestamp.as_ref(),
        ) {
            candidates.push(Candidate {
                name,
                uid,
                created: created.0,
            });
        }
    }
    (candidates, idle)
}

/// Whether a pairing's server was taken for its claim (the claim as the store shows it), or
/// what became of the pairing instead.
enum Taken {
    Yes(Arc<SparkConnectClaim>),
    No(Outcome),
}

/// A pairing's claim and server as the store shows them.
struct Found {
    claim: Arc<SparkConnectClaim>,
    pod: Arc<Pod>,
}

/// The claim and server of pairing `a` as the store shows them, or what became of it: a claim
/// or server gone (or replaced) meanwhile ends the pairing.
fn find(ctx: &Context, terms: &PoolTerms, a: &Assignment) -> Result<Found, Outcome> {
    let claim = claim(ctx, terms, &a.claim)
        .filter(|c| c.metadata.uid.as_deref() == Some(a.claim_uid.as_str()))
        .ok_or(Outcome::ClaimGone {
            server_taken: false,
        })?;
    let pod = ctx
        .stores
        .pods
        .get(&ObjectRef::new(&a.server.name).within(&terms.namespace))
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata.uid.as_deref() == Some(a.server.uid.as_str())
        })
        .ok_or(Outcome::ServerTaken)?;
    Ok(Found { claim, pod })
}

/// Takes the servers of `assignments` for their claims (of cluster `key`) in one ledger write.
/// A server already held by someone else puts its claim back at the head of the line.
async fn take_servers(
    ctx: &Context,
    key: &str,
    terms: &PoolTerms,
    turn: &mut LedgerTurn,
    assignments: &[Assignment],
) -> Vec<Taken> {
    let found: Vec<Result<Found, Outcome>> =
        assignments.iter().map(|a| find(ctx, terms, a)).collect();
    let asks: Vec<Ask<'_>> = found
        .iter()
        .zip(assignments)
        .filter_map(|(found, a)| {
            let Found { pod, .. } = found.as_ref().ok()?;
            Some(Ask {
                pod: pod.as_ref(),
                holder: BindHolder::Claim {
                    name: &a.claim,
                    uid: &a.claim_uid,
                },
            })
        })
        .collect();
    let of = LedgerOf {
        client: &ctx.client,
        stored: &ctx.stores.ledgers,
        namespace: &terms.namespace,
        cluster: &terms.cluster,
        cluster_uid: &terms.cluster_uid,
    };
    let started = Instant::now();
    let squatted_before = ctx.ledgers.squatted(key);
    let written = turn.take(of, &asks).await;
    tracing::debug!(cluster = %terms.cluster, servers = asks.len(), took = ?started.elapsed(), "bind ledger written");
    match written {
        Ok(takes) => {
            let mut takes = takes.into_iter();
            found
                .into_iter()
                .map(|found| match found {
                    Err(outcome) => Taken::No(outcome),
                    Ok(Found { claim, .. }) => match takes.next() {
                        Some(Take::Won) => Taken::Yes(claim),
                        Some(Take::Lost) | None => Taken::No(Outcome::ServerTaken),
                    },
                })
                .collect()
        }
        Err(error) => {
            let squatted = matches!(error, Error::NotOwned { .. });
            if squatted && !squatted_before {
                ledger_squatted(ctx, terms, &error);
            }
            // A refusal fails the claims it was for; a squatted name or a transient error
            // leaves them in line.
            let refused = error.refusal().is_some() && !squatted;
            let outcome = || {
                if refused {
                    Outcome::Refused(error.to_string())
                } else {
                    Outcome::Failed(error.to_string())
                }
            };
            found
                .into_iter()
                .map(|found| Taken::No(found.err().unwrap_or_else(outcome)))
                .collect()
        }
    }
}

/// Says on the cluster, with a Warning Event (once, when it is first met), that a ConfigMap of
/// its ledger's name that is not its own keeps every claim waiting.
fn ledger_squatted(ctx: &Context, terms: &PoolTerms, error: &Error) {
    let owner = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&terms.cluster).within(&terms.namespace));
    if let Some(owner) = owner {
        ctx.event(
            owner.as_ref(),
            EventType::Warning,
            "NameConflict",
            &format!("claims wait: {}", error.brief()),
        );
    }
}

/// Marks the claim of a taken server Bound.
async fn report_bound(
    ctx: &Context,
    terms: &PoolTerms,
    a: &Assignment,
    claim: &SparkConnectClaim,
) -> Outcome {
    match write_bound(ctx, terms, claim, &a.server.name, a.first_seen).await {
        Ok(()) => Outcome::Bound,
        Err(e) if e.api_code() == Some(404) => Outcome::ClaimGone { server_taken: true },
        Err(e) => Outcome::Unreported(e),
    }
}

/// Writes the Bound status of `claim` on `server`, with metrics and an Event.
pub async fn write_bound(
    ctx: &Context,
    terms: &PoolTerms,
    claim: &SparkConnectClaim,
    server: &str,
    first_seen: Timestamp,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let waited = now.duration_since(first_seen).as_millis().max(0);
    let waited = i64::try_from(waited).unwrap_or(i64::MAX);
    let status = bound_status(
        claim,
        server,
        endpoint(server, &terms.namespace, terms.port),
        terms.token_mode.then(|| server_token_secret_name(server)),
        waited,
        now,
    );
    let api: Api<SparkConnectClaim> = Api::namespaced(ctx.client.clone(), &terms.namespace);
    let name = claim.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&status_patch(claim.status.as_ref(), &status)?),
    )
    .await
    .map_err(|e| Error::kube(format!("update status of claim {name}"), e))?;
    ctx.metrics.claims.with_label_values(&["bound"]).inc();
    #[allow(clippy::cast_precision_loss)]
    ctx.metrics
        .claim_wait
        .with_label_values(&[terms.namespace.as_str(), terms.cluster.as_str()])
        .observe(waited as f64 / 1000.0);
    ctx.event(
        claim,
        EventType::Normal,
        "Bound",
        &format!("bound to server {server} after {waited} ms"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::bind_ledger::{Entry, ledger};
    use crate::controller::stores::Held;
    use crate::test_support::{
        MockApiserver, arrival, candidate, context_over, idle_server, pool_terms,
    };
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::client::Body;
    use serde_json::json;

    const NS: &str = "ns";
    const UID: &str = "cluster-uid";
    const KEY: &str = "ns/c";

    fn at(secs: i64) -> String {
        Timestamp::from_second(1_800_000_000 + secs)
            .unwrap()
            .to_string()
    }

    fn server(name: &str, age: i64) -> Pod {
        idle_server(name, Timestamp::from_second(1_800_000_000 - age).unwrap())
    }

    fn claim(name: &str, created: i64) -> SparkConnectClaim {
        serde_json::from_value(
            json!({"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "creationTimestamp": at(created)},
            "spec": {"cluster": "c"}}),
        )
        .unwrap()
    }

    /// A context over `held`, reading a mock apiserver, with every server healthy and the
    /// claims (name, seconds after the epoch) in line for cluster `ns/c`.
    fn serving(held: Held, line: &[(&str, i64)]) -> (Arc<Context>, MockApiserver) {
        let uids: Vec<String> = held.pods.iter().filter_map(|p| p.uid()).collect();
        let (ctx, handle) = context_over(held, NS);
        for uid in uids {
            ctx.prober.book().seed(&uid, Verdict::Healthy);
        }
        ctx.allocator.publish(KEY, pool_terms());
        let now = Timestamp::from_second(1_800_000_100).unwrap();
        for (name, created) in line {
            let created = Timestamp::from_second(1_800_000_000 + created).unwrap();
            ctx.allocator
                .enqueue(
                    KEY,
                    arrival(name, &format!("uid-{name}"), created, now),
                    &[],
                )
                .unwrap();
        }
        (ctx, handle)
    }

    /// A request's method, path and JSON body (`null` when it has none).
    async fn read(request: Request<Body>) -> (http::Method, String, serde_json::Value) {
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (method, path, body)
    }

    fn respond(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    const LEDGERS: &str = "/api/v1/namespaces/ns/configmaps";
    const LEDGER: &str = "/api/v1/namespaces/ns/configmaps/c-binds";

    /// A ledger of `c` on the apiserver (resourceVersion 5), as another leader wrote it.
    fn their_ledger(entries: &[(&Pod, BindHolder<'_>)]) -> ConfigMap {
        let data = entries
            .iter()
            .map(|(pod, holder)| {
                let entry = Entry::new(pod, *holder).unwrap();
                (pod.name_any(), entry.encode())
            })
            .collect();
        let mut theirs = ledger("c", UID, NS, data);
        theirs.metadata.resource_version = Some("5".into());
        theirs
    }

    /// Answers like an apiserver holding `existing` as the ledger's name (when given): a create
    /// conflicts, a read returns it, a patch conditional on its version merges into it; claim
    /// status writes succeed. Stops after `statuses` status writes, or at the first request
    /// `stop` matches; returns what it saw as "METHOD path servers-written".
    async fn apiserver(
        mut handle: MockApiserver,
        existing: Option<ConfigMap>,
        statuses: usize,
        stop: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (method, path, body) = read(request).await;
            let servers: Vec<&str> = body["data"]
                .as_object()
                .map(|d| d.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let line = format!("{method} {path} {}", servers.join(","));
            seen.push(line.trim_end().to_string());
            let reply = match (method.as_str(), existing.as_ref()) {
                ("POST", Some(_)) if path == LEDGERS => respond(
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "AlreadyExists", "code": 409}),
                ),
                ("GET", Some(theirs)) if path == LEDGER => {
                    respond(200, serde_json::to_value(theirs).unwrap())
                }
                ("PATCH", Some(theirs)) if path == LEDGER => {
                    assert_eq!(body["metadata"]["resourceVersion"], "5", "{body}");
                    let mut written = theirs.clone();
                    let data = written.data.get_or_insert_default();
                    for (server, entry) in body["data"].as_object().into_iter().flatten() {
                        data.insert(server.clone(), entry.as_str().unwrap().to_string());
                    }
                    respond(200, serde_json::to_value(&written).unwrap())
                }
                ("PATCH", _) if path.ends_with("/status") => {
                    respond(200, serde_json::to_value(claim("x", 1)).unwrap())
                }
                _ => respond(201, body),
            };
            send.send_response(reply);
            let written = seen.iter().filter(|s| s.ends_with("/status")).count();
            if written >= statuses || stop(seen.last().map_or("", String::as_str)) {
                break;
            }
        }
        seen
    }

    /// Serves `line` with `held`, against [`apiserver`]; returns what it saw and the context.
    async fn serve_against(
        held: Held,
        line: &[(&str, i64)],
        existing: Option<ConfigMap>,
        statuses: usize,
        stop: impl Fn(&str) -> bool + Send + 'static,
    ) -> (Vec<String>, Arc<Context>) {
        let (ctx, handle) = serving(held, line);
        let apiserver = tokio::spawn(apiserver(handle, existing, statuses, stop));
        tokio::time::timeout(std::time::Duration::from_secs(10), serve(&ctx, KEY))
            .await
            .expect("serving ends");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), apiserver)
            .await
            .expect("the apiserver saw it all")
            .unwrap();
        (seen, ctx)
    }

    #[tokio::test]
    async fn one_ledger_write_takes_the_servers_of_every_claim_in_line() {
        let held = Held {
            pods: vec![server("s1", 60), server("s2", 30), server("s3", 10)],
            claims: vec![claim("a", 1), claim("b", 2), claim("c", 3)],
            ..Held::default()
        };
        let line = [("a", 1), ("b", 2), ("c", 3)];
        let (seen, ctx) = serve_against(held, &line, None, 3, |_| false).await;
        assert_eq!(
            seen[0],
            format!("POST {LEDGERS} s1,s2,s3"),
            "one write, the oldest server for the first claim: {seen:?}"
        );
        assert_eq!(seen.len(), 4, "then one status write per claim: {seen:?}");
        assert_eq!(ctx.allocator.waiting(KEY), 0);
    }

    /// Asserts that the claim `first`, whose server was taken, still waits first in line and
    /// that the taken server is not tried again.
    fn first_still_first_and_the_taken_server_not_tried(ctx: &Context, seen: &[String]) {
        let (key, now) = (KEY, Timestamp::from_second(1_800_000_100).unwrap());
        assert!(
            seen.iter().any(|s| s == "PATCH /apis/sparkconnect.dev/v1alpha1/namespaces/ns/sparkconnectclaims/second/status"),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.contains("claims/first/status")),
            "the conflicted claim is not marked bound: {seen:?}"
        );
        assert_eq!(
            ctx.allocator.waiting(key),
            1,
            "only the conflicted claim waits"
        );
        assert!(
            ctx.allocator
                .assign(key, &[candidate("s-old", now)], |_| true, Instant::now())
                .is_empty(),
            "the taken server is not tried again"
        );
        let next =
            ctx.allocator
                .assign(key, &[candidate("s-fresh", now)], |_| true, Instant::now());
        assert_eq!(next[0].claim, "first", "it is still first in line");
    }

    #[tokio::test]
    async fn a_server_already_taken_leaves_the_claim_first_in_line_and_others_still_bind() {
        // Another leader's ledger hands the oldest server to another claim; this process's
        // store does not show it yet.
        let other = BindHolder::Claim {
            name: "other",
            uid: "uid-other",
        };
        let theirs = their_ledger(&[(&server("s-old", 60), other)]);
        let held = Held {
            pods: vec![server("s-old", 60), server("s-new", 10)],
            claims: vec![claim("first", 1), claim("second", 2)],
            ..Held::default()
        };
        let line = [("first", 1), ("second", 2)];
        let (seen, ctx) = serve_against(held, &line, Some(theirs), 1, |_| false).await;
        assert_eq!(
            seen[..3],
            [
                format!("POST {LEDGERS} s-new,s-old"),
                format!("GET {LEDGER}"),
                format!("PATCH {LEDGER} s-new"),
            ],
            "read again on the conflict, only the free server written: {seen:?}"
        );
        first_still_first_and_the_taken_server_not_tried(&ctx, &seen);
    }

    #[tokio::test]
    async fn a_ledger_the_cluster_does_not_own_keeps_every_claim_waiting_and_says_so() {
        let held = Held {
            clusters: vec![
                serde_json::from_value(json!({
                "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectCluster",
                "metadata": {"name": "c", "namespace": NS, "uid": UID},
                "spec": {"image": "apache/spark:4.3.0"}}))
                .unwrap(),
            ],
            pods: vec![server("s1", 60), server("s2", 10)],
            claims: vec![claim("first", 1), claim("second", 2)],
            ..Held::default()
        };
        // Someone allowed to create ConfigMaps took the ledger's name first.
        let mut squatter = their_ledger(&[]);
        squatter.metadata.owner_references = None;
        squatter.metadata.labels = None;
        let is_event = |line: &str| line.contains("/events");
        let line = [("first", 1), ("second", 2)];
        let (seen, ctx) = serve_against(held, &line, Some(squatter), 1, is_event).await;
        assert_eq!(
            seen,
            vec![
                format!("POST {LEDGERS} s1,s2"),
                format!("GET {LEDGER}"),
                "POST /apis/events.k8s.io/v1/namespaces/ns/events".to_string(),
            ],
            "no server taken, no claim written, a Warning Event: {seen:?}"
        );
        assert_eq!(ctx.allocator.waiting(KEY), 2, "both claims wait");
        assert!(ctx.ledgers.squatted(KEY), "the cluster reports it");
    }

    #[tokio::test]
    async fn a_refused_ledger_write_fails_the_claims_it_was_for_with_the_reason() {
        let held = Held {
            pods: vec![server("s1", 60), server("s2", 10)],
            claims: vec![claim("refused", 1), claim("also", 2)],
            ..Held::default()
        };
        let (ctx, mut handle) = serving(held, &[("refused", 1), ("also", 2)]);
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (_, path, body) = read(request).await;
                let reply = if path == LEDGERS {
                    respond(
                        422,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "data: Too long", "reason": "Invalid", "code": 422}),
                    )
                } else {
                    respond(200, serde_json::to_value(claim("x", 1)).unwrap())
                };
                seen.push((path, body.to_string()));
                send.send_response(reply);
                let statuses = seen.iter().filter(|(p, _)| p.ends_with("/status")).count();
                if statuses >= 2 {
                    break;
                }
            }
            seen
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), serve(&ctx, KEY))
            .await
            .expect("serving ends");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), apiserver)
            .await
            .expect("both claims written")
            .unwrap();
        for claim in ["refused", "also"] {
            let status = seen
                .iter()
                .find(|(p, _)| p.ends_with(&format!("/sparkconnectclaims/{claim}/status")))
                .map(|(_, body)| body.clone())
                .unwrap_or_default();
            assert!(status.contains("\"Failed\""), "{status}");
            assert!(status.contains("Too long"), "{status}");
        }
        assert_eq!(ctx.allocator.waiting(KEY), 0);
    }
}
