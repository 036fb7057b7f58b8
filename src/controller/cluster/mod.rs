//! Reconciling a `SparkConnectCluster`: validate → children → observe → decide → act → report.
//! The steps live in this folder's files; this one only runs them in order, and cleans up what
//! lives outside the apiserver (prober targets, metrics, claims) when a cluster is deleted.

pub mod act;
pub mod children;
pub mod observe;
pub mod pace;
pub mod report;
pub mod tokens;

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::bind;
use super::claim_status;
use super::context::{Context, cluster_key, key_of};
use super::guard::{UNTIL_SYNCED, guarded};
use super::pool::allocator::PoolTerms;
use super::pool::{Decision, Inputs, Wanted, decide};
use crate::builders::labels::{ServerState, token_secret_name};
use crate::crd::{AuthMode, ClaimPhase, SparkConnectCluster};
use crate::error::Error;
use crate::validate::{ValidCluster, validate};
use children::ClusterToken;
use observe::Observed;
use report::{Problems, Summary};

const CONTROLLER: &str = "cluster";
/// Finalizer that lets the operator forget a deleted cluster's servers and end its claims.
pub const FINALIZER: &str = "sparkconnect.dev/cleanup";

/// Reconciles one cluster (guarded: a panic or a hang is this cluster's error only).
pub async fn reconcile(
    cluster: Arc<SparkConnectCluster>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let key = key_of(cluster.as_ref());
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[CONTROLLER])
        .start_timer();
    ctx.metrics
        .reconciles
        .with_label_values(&[CONTROLLER])
        .inc();
    let result = guarded(&ctx.liveness, &key, with_finalizer(cluster, &ctx)).await;
    timer.observe_duration();
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[CONTROLLER, e.metric_label()])
            .inc();
    }
    result
}

async fn with_finalizer(cluster: Arc<SparkConnectCluster>, ctx: &Context) -> Result<Action, Error> {
    // A store that has not listed everything yet would show servers as gone: decide nothing.
    if !ctx.stores.synced() {
        return Ok(Action::requeue(UNTIL_SYNCED));
    }
    let namespace = cluster
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<SparkConnectCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, cluster, |event| async move {
        match event {
            Finalizer::Apply(cluster) => run(&cluster, ctx).await,
            Finalizer::Cleanup(cluster) => cleanup(&cluster, ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => {
            Error::kube("update the cleanup finalizer", e)
        }
        kube::runtime::finalizer::Error::UnnamedObject => Error::MissingObjectKey("metadata.name"),
        kube::runtime::finalizer::Error::InvalidFinalizer => {
            Error::MissingObjectKey("a valid finalizer name")
        }
    })
}

/// The pipeline of one live cluster.
async fn run(cluster: &SparkConnectCluster, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let valid = match validate(cluster) {
        Ok(valid) => valid,
        Err(e @ Error::InvalidSpec(_)) => return report::report_invalid(cluster, ctx, &e).await,
        Err(e) => return Err(e),
    };
    let key = observe::key(&valid);
    let mut problems = Problems::default();
    let seen = ctx.applied.scope(&key);

    let token = children::ensure(&valid, ctx, &seen, &mut problems).await?;
    let mut observed = observe::observe(&valid, ctx, &token);
    let tokens = tokens::resolve(&valid, ctx, &observed, &token).await;
    let token_mode = cluster.spec.auth.mode == AuthMode::Token;
    tokens::mark_unknown_tokens(&mut observed.views, &tokens, token_mode);
    let paced = pace::wanted(&valid, ctx, &key, &observed, now);
    let wanted = paced.wanted;

    let mut decision = decide(inputs(&valid, &observed, wanted, token_mode), now);
    note_observations(&observed, &decision, &token, &mut problems);
    for refused in &valid.schedule_refused {
        problems.note("ScheduleInvalid", refused.clone());
    }
    pace::gate_starts(ctx, &key, &observed, &mut decision, &mut problems);
    let refill_held = pace::hold_refill(
        ctx,
        &key,
        valid.timings.refill_delay,
        &observed,
        &mut decision,
    );

    act::execute(
        &valid,
        ctx,
        &observed,
        &decision,
        &token,
        &tokens,
        &mut problems,
    )
    .await?;
    act::publish_endpoints(&valid, ctx, &observed, &decision, &seen, &mut problems).await?;
    let stamps_wait = act::stamp_taken_servers(&valid, ctx, &observed, &mut problems).await?;
    act::tend_ledger(&valid, ctx, &observed, &mut problems).await?;
    publish_terms(&valid, ctx, &observed, &key, token_mode);

    let summary = Summary {
        counts: report::server_counts(&decision),
        idle_target: wanted.idle_target(valid.size, 0),
        wanted,
        problems: &problems,
        token_secret: token_mode.then(|| token_secret_name(cluster)),
        spark_version: observed.servers.values().find_map(|p| {
            ctx.prober
                .book()
                .get(p.metadata.uid.as_deref()?)
                .spark_version
        }),
        last_warmup: observed.last_warmup,
        start_time: paced.start_time,
        look_again_within: refill_held
            .into_iter()
            .chain(stamps_wait)
            .chain(wanted.scheduled.next_change)
            .min(),
    };
    report::report(&valid, ctx, &decision, summary, &key).await
}

/// What the decision reads, from an observation.
pub(crate) fn inputs<'a>(
    valid: &ValidCluster<'_>,
    observed: &'a Observed,
    wanted: Wanted,
    token_mode: bool,
) -> Inputs<'a> {
    Inputs {
        servers: observed.views.clone(),
        claims: &observed.claim_views,
        claimed_servers: observed.claimed_servers.clone(),
        handed_out: &observed.handed_out,
        size: valid.size,
        wanted,
        hashes: &observed.hashes,
        split_roles: token_mode,
        timings: valid.timings,
    }
}

/// Problems seen in what exists (not in what was written).
fn note_observations(
    observed: &Observed,
    decision: &Decision,
    token: &ClusterToken,
    problems: &mut Problems,
) {
    if !observed.foreign.is_empty() {
        problems.note(
            "ForeignPods",
            format!(
                "pods {} carry this cluster's server labels but were not made by the operator; they are ignored",
                observed.foreign.join(", ")
            ),
        );
    }
    if let ClusterToken::Missing(why) = token {
        problems.note("TokenMissing", why.clone());
    }
    for view in observed.views.iter().filter(|v| v.auth_rejected) {
        problems.note(
            "TokenRejected",
            format!(
                "server {} refuses the token it was started with (UNAUTHENTICATED)",
                view.name
            ),
        );
    }
    for (server, why) in &observed.failed_warmups {
        problems.note(
            "WarmupFailed",
            format!(
                "server {server} failed its warm-up ({why}); it is tried again at its next probe"
            ),
        );
    }
    let capped: usize = decision.plans().map(|(_, p)| p.capped).sum();
    if capped > 0 {
        problems.note(
            "ServerCapReached",
            format!(
                "hotPool.maxServers reached: {capped} more servers are needed and wait for claimed ones to end"
            ),
        );
    }
}

/// Tells the allocator how to bind this cluster's claims, and serves its line in the
/// background (the reconcile never waits on binds).
fn publish_terms(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    key: &str,
    token_mode: bool,
) {
    let healthy_shared = observed
        .views
        .iter()
        .filter(|v| v.state == ServerState::Shared && v.healthy)
        .count();
    let reserved_for_shared = if token_mode {
        0
    } else {
        valid.size.shared.saturating_sub(healthy_shared)
    };
    ctx.allocator.publish(
        key,
        PoolTerms {
            namespace: valid.namespace.into(),
            cluster: valid.name.into(),
            cluster_uid: valid.uid.into(),
            server_hash: observed.hashes.pool.clone(),
            reserved_for_shared,
            max_waiting: valid.size.max_waiting,
            port: valid.cluster.spec.server.port,
            token_mode,
        },
    );
    // Drop from the line only claims the store shows gone, bound or ended now: claims queued
    // while this reconcile ran are not in its observation, and must stay.
    ctx.allocator.retain_waiting(key, |name, uid| {
        let claim = ctx
            .stores
            .claims
            .get(&ObjectRef::new(name).within(valid.namespace));
        claim.is_some_and(|c| {
            let status = c.status.as_ref();
            c.metadata.uid.as_deref() == Some(uid)
                && c.metadata.deletion_timestamp.is_none()
                && status.is_none_or(|s| s.server.is_none() && s.phase == ClaimPhase::Pending)
        })
    });
    if ctx.allocator.waiting(key) > 0 {
        bind::serve_in_background(ctx, key);
    }
}

/// A deleted cluster: its claims are Lost, and this process forgets its servers (prober
/// targets, tokens), its metrics series and its line of waiting claims. The apiserver's garbage
/// collector removes the children.
async fn cleanup(cluster: &SparkConnectCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let key = cluster_key(namespace, name);
    let now = Timestamp::now();
    let message = format!("SparkConnectCluster {name} was deleted; its servers are gone");
    for claim in ctx.stores.claims.of_cluster(namespace, name) {
        let phase = claim.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if phase.is_final() {
            continue;
        }
        let ended = claim_status::finish_claim(
            ctx,
            &claim,
            ClaimPhase::Lost,
            "ClusterDeleted",
            &message,
            now,
        )
        .await;
        if claim_status::ignore_gone(ended)? {
            ctx.event(
                claim.as_ref(),
                EventType::Warning,
                "ClusterDeleted",
                &message,
            );
        }
    }
    ctx.prober.forget_cluster(&ObjectRef::from_obj(cluster));
    ctx.allocator.forget_cluster(&key);
    ctx.ledgers.forget_cluster(&key);
    ctx.autoscaler.forget(&key);
    ctx.applied.forget(&key);
    ctx.retries.succeeded(&key);
    ctx.metrics
        .forget_cluster(namespace, name, ServerState::ALL.map(ServerState::as_str));
    Ok(Action::await_change())
}

/// Retry policy: the per-cluster delay grows with each failure (2 s … 5 min), for permanent
/// and transient errors alike, so a broken object never spins.
pub fn error_policy(cluster: Arc<SparkConnectCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = cluster_key(
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default(),
    );
    let delay = ctx.retries.failed(&key);
    tracing::warn!(cluster = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
