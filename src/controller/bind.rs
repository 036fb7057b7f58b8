//! Binding: makes the allocator's pairings real. For each pairing the server's bind Lease is
//! created naming the claim (the apiserver creates a name once, so two leaders or a racing
//! scale-down can never give one server twice), then the claim's status says Bound: two small
//! writes on the claim's path. The server pod is stamped with its claim after the burst (see
//! `cluster::act`). Pairings are written in parallel, bounded; a taken server puts the claim
//! back at the head of the line; a refused write fails only that claim. Events never sit
//! between a claim and its bind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::{controlled_by, status_patch};
use super::claim_status::{bound_status, finish_claim};
use super::context::Context;
use super::fence::{self, Take};
use super::pool::allocator::{Assignment, Candidate, PoolTerms};
use crate::builders::bind_lease::{BindHolder, bind_lease_name};
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
    /// The server is not free: its bind Lease exists (another claim, another leader), or its
    /// pod is gone or was replaced since it was read.
    ServerTaken,
    /// The claim was deleted meanwhile; `server_taken` says whether its bind Lease was made.
    ClaimGone { server_taken: bool },
    /// The apiserver refused the server write for this claim (e.g. its user does not fit).
    Refused(String),
    /// A transient error before the server was taken; the claim goes back in line.
    Failed(Error),
    /// The server was taken but the claim's status could not be written: the claim's next
    /// reconcile finds the Lease that names it and finishes the bind.
    Unreported(Error),
}

/// Serves the line of cluster `key` until it is empty, no server is free, or conflicts stop.
pub async fn serve(ctx: &Context, key: &str) {
    for _ in 0..ROUNDS {
        let Some(terms) = ctx.allocator.terms(key) else {
            return;
        };
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
        let results: Vec<(Assignment, Outcome)> = futures::stream::iter(assignments)
            .map(|a| async {
                let outcome = bind_one(ctx, &terms, &a).await;
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
            // Whatever took it (another leader, a Lease this process cannot see), the server is
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
        Outcome::Failed(e) => {
            tracing::warn!(claim = %assignment.claim, error = %e, "binding failed; the claim waits");
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
fn candidates(ctx: &Context, terms: &PoolTerms) -> (Vec<Candidate>, BTreeSet<String>) {
    let book = ctx.prober.book();
    let leased = |server: &str| {
        let lease = ObjectRef::new(&bind_lease_name(server)).within(&terms.namespace);
        ctx.stores.leases.get(&lease).is_some()
    };
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
        if leased(&name) {
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

/// Takes the server for the claim (creates its bind Lease), then marks the claim Bound. The
/// server pod is stamped with the claim later, when the burst of binds is over.
async fn bind_one(ctx: &Context, terms: &PoolTerms, a: &Assignment) -> Outcome {
    let _under_way = ctx.binds.begin();
    let claim = claim(ctx, terms, &a.claim)
        .filter(|c| c.metadata.uid.as_deref() == Some(a.claim_uid.as_str()));
    let Some(claim) = claim else {
        return Outcome::ClaimGone {
            server_taken: false,
        };
    };
    let started = std::time::Instant::now();
    match take_server(ctx, terms, a, claim.spec.user.as_deref()).await {
        Ok(()) => {}
        Err(outcome) => return outcome,
    }
    let taken_in = started.elapsed();
    let written = write_bound(ctx, terms, &claim, &a.server.name, a.first_seen).await;
    tracing::debug!(
        claim = %a.claim,
        server = %a.server.name,
        server_write = ?taken_in,
        claim_write = ?started.elapsed().saturating_sub(taken_in),
        "bind written"
    );
    match written {
        Ok(()) => Outcome::Bound,
        Err(e) if e.api_code() == Some(404) => Outcome::ClaimGone { server_taken: true },
        Err(e) => Outcome::Unreported(e),
    }
}

/// Creates the server's bind Lease naming the claim: the one write that decides the server is
/// the claim's. A Lease already there is someone else's (the server is taken) unless it names
/// this very claim (an earlier try that got no further); a forged one gets its server removed.
async fn take_server(
    ctx: &Context,
    terms: &PoolTerms,
    a: &Assignment,
    user: Option<&str>,
) -> Result<(), Outcome> {
    let pod = ctx
        .stores
        .pods
        .get(&ObjectRef::new(&a.server.name).within(&terms.namespace))
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata.uid.as_deref() == Some(a.server.uid.as_str())
        })
        .ok_or(Outcome::ServerTaken)?;
    let holder = BindHolder::Claim {
        name: &a.claim,
        uid: &a.claim_uid,
    };
    match fence::take(ctx, &terms.cluster, &pod, holder, user).await {
        Ok(Take::Won) => Ok(()),
        Ok(Take::Lost) => Err(Outcome::ServerTaken),
        Ok(Take::Forged) => {
            if let Err(e) = fence::remove_blocked(ctx, &terms.cluster, &pod).await {
                tracing::warn!(server = %a.server.name, error = %e, "removing a server a forged bind Lease blocks failed");
            }
            Err(Outcome::ServerTaken)
        }
        Err(error) => Err(match error.refusal() {
            Some(_) => Outcome::Refused(error.to_string()),
            None => Outcome::Failed(error),
        }),
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
    use crate::builders::bind_lease::bind_lease;
    use crate::builders::labels::{CLUSTER_LABEL, STATE_LABEL};
    use crate::controller::stores::Held;
    use crate::test_support::{MockApiserver, candidate, context_over, pool_terms};
    use http::{Request, Response};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
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
        serde_json::from_value(json!({"metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "7",
            "creationTimestamp": at(-age),
            "labels": {CLUSTER_LABEL: "c", SERVER_LABEL: name, STATE_LABEL: "idle",
                       SPEC_HASH_LABEL: "h", "app.kubernetes.io/component": "server"},
            "ownerReferences": [{"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectCluster",
                                 "name": "c", "uid": UID, "controller": true}]
        }}))
        .unwrap()
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
                .enqueue(KEY, name, &format!("uid-{name}"), created, now)
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

    /// `:<name>` of a Lease being created, or nothing.
    fn lease_name(body: &serde_json::Value) -> String {
        match (body["kind"].as_str(), body["metadata"]["name"].as_str()) {
            (Some("Lease"), Some(name)) => format!(":{name}"),
            _ => String::new(),
        }
    }

    fn respond(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// Serves claims `first` and `second` with two servers, where the oldest one's bind Lease
    /// already exists (every time it is tried) and reads back as `found`; the other bind goes
    /// through. Returns the requests seen and the context after serving.
    async fn serve_with_the_oldest_server_taken(found: Lease) -> (Vec<String>, Arc<Context>) {
        let held = Held {
            pods: vec![server("s-old", 60), server("s-new", 10)],
            claims: vec![claim("first", 1), claim("second", 2)],
            ..Held::default()
        };
        let (ctx, mut handle) = serving(held, &[("first", 1), ("second", 2)]);
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (method, path, body) = read(request).await;
                let target = lease_name(&body);
                seen.push(format!("{method} {path}{target}"));
                let reply = if target == ":s-old-bind" {
                    respond(
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "leases \"s-old-bind\" already exists", "reason": "AlreadyExists", "code": 409}),
                    )
                } else if method == http::Method::GET && path.ends_with("/leases/s-old-bind") {
                    respond(200, serde_json::to_value(&found).unwrap())
                } else if method == http::Method::DELETE {
                    respond(
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                } else if path.ends_with("/sparkconnectclaims/second/status") {
                    respond(200, serde_json::to_value(claim("second", 2)).unwrap())
                } else {
                    respond(201, body)
                };
                send.send_response(reply);
                let read_back = seen
                    .iter()
                    .any(|s| s.starts_with("GET") && s.ends_with("s-old-bind"));
                let forged = found.metadata.owner_references.is_none();
                let answered = !forged || seen.iter().any(|s| s.starts_with("DELETE"));
                if read_back && answered && seen.iter().any(|s| s.ends_with("/second/status")) {
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
            .expect("the apiserver saw it all")
            .unwrap();
        (seen, ctx)
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
        // Another leader's bind Lease, naming another claim, is not in this process's store.
        let theirs = bind_lease(
            "c",
            &server("s-old", 60),
            BindHolder::Claim {
                name: "other",
                uid: "uid-other",
            },
            None,
        );
        let (seen, ctx) = serve_with_the_oldest_server_taken(theirs.unwrap()).await;
        first_still_first_and_the_taken_server_not_tried(&ctx, &seen);
        assert!(
            !seen.iter().any(|s| s.starts_with("DELETE")),
            "a server another claim holds is left alone: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_server_a_forged_bind_lease_blocks_is_removed_and_the_claim_stays_first() {
        let mut forged = bind_lease(
            "c",
            &server("s-old", 60),
            BindHolder::Claim {
                name: "mine",
                uid: "uid-mine",
            },
            None,
        )
        .unwrap();
        forged.metadata.owner_references = None;
        forged.metadata.labels = None;
        let (seen, ctx) = serve_with_the_oldest_server_taken(forged).await;
        first_still_first_and_the_taken_server_not_tried(&ctx, &seen);
        assert!(
            seen.iter()
                .any(|s| s == "DELETE /api/v1/namespaces/ns/pods/s-old"),
            "the blocked server is removed: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_bind_fails_only_that_claim() {
        let held = Held {
            pods: vec![server("s1", 60), server("s2", 10)],
            claims: vec![claim("refused", 1), claim("fine", 2)],
            ..Held::default()
        };
        let (ctx, mut handle) = serving(held, &[("refused", 1), ("fine", 2)]);
        let key = KEY;
        // The oldest claim's server write is refused (422); the other claim binds, and the
        // refused one ends Failed with the apiserver's reason.
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (_, path, body) = read(request).await;
                let reply = if lease_name(&body) == ":s1-bind" {
                    respond(
                        422,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "metadata.annotations: Too long", "reason": "Invalid", "code": 422}),
                    )
                } else if path.ends_with("/status") {
                    respond(200, serde_json::to_value(claim("x", 1)).unwrap())
                } else {
                    respond(201, body.clone())
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
        tokio::time::timeout(std::time::Duration::from_secs(10), serve(&ctx, key))
            .await
            .expect("serving ends");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), apiserver)
            .await
            .expect("both claims written")
            .unwrap();
        let status_of = |claim: &str| {
            seen.iter()
                .find(|(p, _)| p.ends_with(&format!("/sparkconnectclaims/{claim}/status")))
                .map(|(_, body)| body.clone())
                .unwrap_or_default()
        };
        assert!(status_of("fine").contains("\"Bound\""), "{seen:?}");
        let refused = status_of("refused");
        assert!(refused.contains("\"Failed\""), "{refused}");
        assert!(refused.contains("Too long"), "{refused}");
        assert_eq!(ctx.allocator.waiting(key), 0);
    }
}
