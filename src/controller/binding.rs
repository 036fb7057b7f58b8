//! Claims, inside the cluster reconcile: binds waiting claims to idle servers (atomically, with
//! the pod's resourceVersion as precondition, so no server is given twice even with two
//! operators racing), reports lost and expired claims, and retires servers whose claim ended.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::apply::write_status_if_changed;
use super::claim_plan::{ClaimLimits, ClaimView, phase, plan_claims};
use super::conditions::set_condition;
use super::plan::ServerView;
use crate::builders::labels::{
    CLAIM_ANNOTATION, STATE_LABEL, ServerState, USER_ANNOTATION, endpoint, token_secret_name,
};
use crate::crd::{AuthMode, SparkConnectClaim, SparkConnectClaimStatus};
use crate::error::Error;
use crate::validate::{ValidCluster, parse_duration};

/// The condition a bound claim carries.
pub const BOUND: &str = "Bound";

/// What the pool needs to know after the claims were handled.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// Claims still waiting for a server (the pool grows by this many).
    pub waiting: usize,
    /// Servers bound in this round.
    pub bound: BTreeSet<String>,
    /// Claimed servers retired in this round.
    pub retired: BTreeSet<String>,
    /// Every live claim on the cluster (the autoscaler counts arrivals).
    pub claims: Vec<String>,
}

fn claim_view(claim: &SparkConnectClaim) -> Option<ClaimView> {
    let status = claim.status.clone().unwrap_or_default();
    Some(ClaimView {
        name: claim.metadata.name.clone()?,
        created: claim.metadata.creation_timestamp.as_ref()?.0,
        phase: status.phase,
        server: status.server,
        bound_at: status.bound_at.map(|t| t.0),
        ttl: claim
            .spec
            .ttl
            .as_deref()
            .and_then(|t| parse_duration("ttl", t).ok()),
    })
}

/// Handles the claims on cluster `valid`.
pub async fn reconcile_claims(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    live: &[&Pod],
    views: &[ServerView],
    reserved_for_shared: usize,
) -> Result<ClaimOutcome, Error> {
    let claims_api: Api<SparkConnectClaim> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let claims: Vec<SparkConnectClaim> = claims_api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list claims", e))?
        .items
        .into_iter()
        .filter(|c| c.spec.cluster == valid.name && c.metadata.deletion_timestamp.is_none())
        .collect();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let claimed_servers: BTreeMap<String, String> = live
        .iter()
        .filter(|p| {
            p.labels().get(STATE_LABEL).map(String::as_str) == Some(ServerState::Claimed.as_str())
        })
        .map(|p| {
            (
                p.name_any(),
                p.annotations()
                    .get(CLAIM_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    let mut idle: Vec<&ServerView> = views
        .iter()
        .filter(|v| v.state == ServerState::Idle && v.healthy && v.spec_hash == valid.spec_hash)
        .collect();
    idle.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let idle: Vec<String> = idle
        .iter()
        .skip(reserved_for_shared)
        .map(|v| v.name.clone())
        .collect();
    let alive: BTreeSet<String> = views
        .iter()
        .filter(|v| !v.exited)
        .map(|v| v.name.clone())
        .collect();
    let limits = ClaimLimits {
        max_waiting: valid.cluster.spec.hot_pool.max_waiting_claims.max(0) as usize,
        wait_timeout: valid.timings.claim_timeout,
    };
    let claim_views: Vec<ClaimView> = claims.iter().filter_map(claim_view).collect();
    let now = Timestamp::now();
    let plan = plan_claims(&claim_views, &claimed_servers, &idle, &alive, limits, now);
    let mut outcome = ClaimOutcome {
        waiting: plan.waiting.len(),
        claims: claim_views.iter().map(|c| c.name.clone()).collect(),
        ..ClaimOutcome::default()
    };
    let by_name: BTreeMap<String, &SparkConnectClaim> =
        claims.iter().map(|c| (c.name_any(), c)).collect();

    for (claim_name, server) in &plan.bind {
        let (Some(claim), Some(pod)) = (
            by_name.get(claim_name),
            live.iter().find(|p| &p.name_any() == server),
        ) else {
            continue;
        };
        let user = claim.spec.user.clone().unwrap_or_default();
        let patch = json!({"metadata": {
            "resourceVersion": pod.resource_version(),
            "labels": {STATE_LABEL: ServerState::Claimed.as_str()},
            "annotations": {CLAIM_ANNOTATION: claim_name, USER_ANNOTATION: user}
        }});
        match pods_api
            .patch(server, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Someone else changed the server first: the claim waits for the next round.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
            Err(e) => return Err(Error::kube(format!("bind server {server}"), e)),
        }
        outcome.bound.insert(server.clone());
        let created = claim
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        let waited = now.duration_since(created).as_millis().max(0) as i64;
        ctx.metrics.claims.with_label_values(&["bound"]).inc();
        ctx.metrics.claim_wait.observe(waited as f64 / 1000.0);
        let mut status = claim.status.clone().unwrap_or_default();
        status.phase = phase::BOUND.into();
        status.server = Some(server.clone());
        status.endpoint = Some(endpoint(
            server,
            valid.namespace,
            valid.cluster.spec.server.port,
        ));
        status.token_secret = (valid.cluster.spec.auth.mode == AuthMode::Token)
            .then(|| token_secret_name(valid.cluster));
        status.bound_at = Some(Time(now));
        status.wait_millis = Some(waited);
        set_condition(
            &mut status.conditions,
            BOUND,
            true,
            "Bound",
            format!("bound to server {server}"),
            claim.metadata.generation,
            now,
        );
        write_claim_status(&claims_api, claim, status).await?;
        ctx.event(
            *claim,
            EventType::Normal,
            "Bound",
            &format!("bound to server {server} after {waited} ms"),
        )
        .await;
    }
    for name in &plan.lost {
        let Some(claim) = by_name.get(name) else {
            continue;
        };
        let server = claim
            .status
            .as_ref()
            .and_then(|s| s.server.clone())
            .unwrap_or_default();
        let message = format!("server {server} is gone; delete this claim and create a new one");
        finish(
            ctx,
            &claims_api,
            claim,
            phase::LOST,
            "ServerLost",
            &message,
            now,
        )
        .await?;
        ctx.metrics.claims.with_label_values(&["lost"]).inc();
    }
    for name in &plan.expired {
        let Some(claim) = by_name.get(name) else {
            continue;
        };
        let message = format!(
            "ttl {} ran out; the server was retired",
            claim.spec.ttl.as_deref().unwrap_or_default()
        );
        finish(
            ctx,
            &claims_api,
            claim,
            phase::EXPIRED,
            "Expired",
            &message,
            now,
        )
        .await?;
        ctx.metrics.claims.with_label_values(&["expired"]).inc();
    }
    for (name, (reason, message)) in &plan.failed {
        let Some(claim) = by_name.get(name) else {
            continue;
        };
        finish(ctx, &claims_api, claim, phase::FAILED, reason, message, now).await?;
        ctx.metrics.claims.with_label_values(&["failed"]).inc();
    }
    for (name, position) in &plan.waiting {
        let Some(claim) = by_name.get(name) else {
            continue;
        };
        let mut status = claim.status.clone().unwrap_or_default();
        status.phase = phase::PENDING.into();
        let message = format!(
            "waiting for an idle server: {position} of {} in line",
            plan.waiting.len()
        );
        set_condition(
            &mut status.conditions,
            BOUND,
            false,
            "WaitingForServer",
            message,
            claim.metadata.generation,
            now,
        );
        write_claim_status(&claims_api, claim, status).await?;
    }
    for server in &plan.retire {
        if let Some(pod) = live.iter().find(|p| &p.name_any() == server) {
            super::cluster::delete_pod(&pods_api, pod).await?;
            outcome.retired.insert(server.clone());
            ctx.event(
                valid.cluster,
                EventType::Normal,
                "ServerRetired",
                &format!("claimed server {server} retired"),
            )
            .await;
        }
    }
    Ok(outcome)
}

async fn finish(
    ctx: &Context,
    api: &Api<SparkConnectClaim>,
    claim: &SparkConnectClaim,
    to_phase: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let mut status = claim.status.clone().unwrap_or_default();
    status.phase = to_phase.into();
    set_condition(
        &mut status.conditions,
        BOUND,
        false,
        reason,
        message.into(),
        claim.metadata.generation,
        now,
    );
    if write_claim_status(api, claim, status).await? {
        let kind = if to_phase == phase::EXPIRED {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.event(claim, kind, reason, message).await;
    }
    Ok(())
}

/// Writes a claim's status when it changed; returns whether it wrote.
pub async fn write_claim_status(
    api: &Api<SparkConnectClaim>,
    claim: &SparkConnectClaim,
    status: SparkConnectClaimStatus,
) -> Result<bool, Error> {
    write_status_if_changed(
        &api.clone().into_client(),
        claim,
        claim.status.as_ref(),
        &status,
    )
    .await
}

/// Whether the claim names this cluster (for the watch mapping).
pub fn cluster_of(
    claim: &SparkConnectClaim,
) -> Option<kube::runtime::reflector::ObjectRef<crate::crd::SparkConnectCluster>> {
    let ns = claim.meta().namespace.as_deref()?;
    Some(kube::runtime::reflector::ObjectRef::new(&claim.spec.cluster).within(ns))
}
