//! Pace: how many idle servers demand needs (the autoscaler, with its Events and metric, and the
//! schedule's open windows) and whether new servers may start yet (the start backoff after
//! failed starts).

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::events::EventType;

use super::observe::Observed;
use super::report::Problems;
use crate::builders::labels::ServerState;
use crate::controller::context::{BINDS_QUIET, Context, MAX_REFILL_HOLD};
use crate::controller::pool::autoscale::{
    DEFAULT_START_TIME, Decision as AutoscaleDecision, Kept, SeenClaim,
};
use crate::controller::pool::plan::RemoveReason;
use crate::controller::pool::{Decision, Wanted};
use crate::validate::ValidCluster;

/// What this round's pace asks for.
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    /// Idle servers the autoscaler and the schedule ask for.
    pub wanted: Wanted,
    /// The start-up time the autoscaler measured (or kept), for the status.
    pub start_time: Option<Duration>,
}

/// The autoscaler's idle target (when autoscaling is on) and the schedule's for this round;
/// the autoscaler's changes become Events and a metric. A schedule window starts its servers
/// ahead of it by their measured start-up time, the last warm-up and one probe period.
pub fn wanted(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    key: &str,
    observed: &Observed,
    now: Timestamp,
) -> Paced {
    let demand = track_demand(valid, ctx, key, observed, now);
    let lead = demand.start_time.unwrap_or(DEFAULT_START_TIME)
        + observed.last_warmup.unwrap_or_default()
        + valid.timings.probe_period;
    Paced {
        wanted: Wanted {
            autoscaled: demand
                .autoscaled
                .map(|(target, decision)| announce(valid, ctx, target, decision)),
            scheduled: valid.schedule.at(now, lead),
        },
        start_time: demand.start_time,
    }
}

/// What the cluster's demand says this round.
struct Tracked {
    /// The measured (or kept) start-up time.
    start_time: Option<Duration>,
    /// The autoscaler's target and its change, when autoscaling.
    autoscaled: Option<(usize, Option<AutoscaleDecision>)>,
}

/// What the cluster's status kept of its autoscaler, taken only within bounds (others than the
/// operator may write a status): a start-up time no longer than `probe.startupDeadline` (a
/// slower server fails its start), a target when autoscaling (the autoscaler clamps it).
fn kept(valid: &ValidCluster<'_>) -> Kept {
    let status = valid.cluster.status.as_ref();
    Kept {
        start_time: status
            .and_then(|s| s.startup_millis)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
            .filter(|t| *t <= valid.timings.startup_deadline),
        target: status
            .and_then(|s| s.idle_target)
            .and_then(|t| usize::try_from(t).ok())
            .filter(|_| valid.size.autoscale),
    }
}

/// Feeds the cluster's demand with this round's claims (each by its age) and start-up times
/// (measured whether or not it autoscales); a cluster this process has not tracked yet goes on
/// from what its status kept.
fn track_demand(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    key: &str,
    observed: &Observed,
    now: Timestamp,
) -> Tracked {
    let size = valid.size;
    let age = |created: Timestamp| Duration::try_from(now.duration_since(created)).ok();
    let warmups: Vec<Duration> = observed
        .views
        .iter()
        .filter(|v| v.state == ServerState::Starting && v.healthy)
        .filter_map(|v| age(v.created))
        .collect();
    let claims: Vec<SeenClaim> = observed
        .claim_views
        .iter()
        .map(|c| SeenClaim {
            name: c.name.clone(),
            age: age(c.created).unwrap_or_default(),
        })
        .collect();
    let instant = Instant::now();
    let hit_rate = f64::from(size.hit_rate_percent) / 100.0;
    ctx.autoscaler
        .with(
            key,
            || kept(valid),
            instant,
            |demand| {
                demand.observe(&claims, &warmups, instant);
                let target = if size.autoscale {
                    Some(demand.target(
                        size.min,
                        size.max,
                        size.idle,
                        hit_rate,
                        valid.timings.scale_down_delay,
                        instant,
                    ))
                } else {
                    demand.stop_targeting();
                    None
                };
                Tracked {
                    start_time: demand.measured_start_time(),
                    autoscaled: target,
                }
            },
        )
        .unwrap_or(Tracked {
            start_time: None,
            autoscaled: None,
        })
}

/// Sets the autoscaler's metric and makes a change of its target an Event; returns the target.
fn announce(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    target: usize,
    decision: Option<AutoscaleDecision>,
) -> usize {
    ctx.metrics
        .autoscaler_target
        .with_label_values(&[valid.namespace, valid.name])
        .set(i64::try_from(target).unwrap_or(i64::MAX));
    if let Some(d) = decision {
        let reason = if d.target > d.previous {
            "AutoscaleUp"
        } else {
            "AutoscaleDown"
        };
        let note = format!("idle target {} -> {}: {}", d.previous, d.target, d.reason);
        ctx.event(valid.cluster, EventType::Normal, reason, &note);
    }
    target
}

/// Holds back new pool servers, and returns when to look again:
/// - while a burst of claims is being bound (a server handed out and not yet seen claimed, any
///   bind's writes under way — the claim's status is written after the server — or the last
///   server handed out less than [`BINDS_QUIET`] ago; at most [`MAX_REFILL_HOLD`] from the
///   burst's first handout, and a burst ends only after that long without binds, so a stream
///   of claims is held once, not at every gap between its claims): the burst's binds get the
///   apiserver before its refills compete with them;
/// - for `refill_delay` (`hotPool.refillDelay`) after a server was handed to a claim, while the
///   pool still has an idle server for the next claim and no other claim was handed one since:
///   the replacement's JVM start and warm-up would otherwise share the cores with the
///   claimant's first queries (a busy pool's replacements never wait).
///
/// Binding itself never waits.
pub fn hold_refill(
    ctx: &Context,
    key: &str,
    refill_delay: Duration,
    observed: &Observed,
    decision: &mut Decision,
) -> Option<Duration> {
    let binding = ctx.binds.under_way()
        || observed
            .handed_out
            .keys()
            .any(|server| !observed.claimed_servers.contains_key(server));
    let now = Instant::now();
    let for_binds = ctx
        .allocator
        .refill_hold(key, binding, BINDS_QUIET, MAX_REFILL_HOLD, now);
    // Handed-out servers already count as claimed in the plan.
    let idle_left = decision.pool.count(ServerState::Idle);
    let for_claimant = ctx
        .allocator
        .claimant_grace(key, idle_left, refill_delay, now);
    let wait = for_binds.into_iter().chain(for_claimant).max()?;
    if decision.pool.create == 0 {
        return None;
    }
    tracing::debug!(
        key,
        create = decision.pool.create,
        ?for_binds,
        ?for_claimant,
        "refill held"
    );
    decision.pool.create = 0;
    Some(wait)
}

/// Holds back new servers while earlier ones keep failing to start; says so as a problem.
/// Returns how long until starting is allowed again.
pub fn gate_starts(
    ctx: &Context,
    key: &str,
    observed: &Observed,
    decision: &mut Decision,
    problems: &mut Problems,
) -> Option<Duration> {
    let failed_starts = decision
        .plans()
        .flat_map(|(_, p)| p.remove.values())
        .filter(|r| matches!(r, RemoveReason::Exited | RemoveReason::StartupTimeout))
        .count();
    let became_healthy = decision.plans().any(|(_, plan)| {
        plan.relabel.iter().any(|(name, state)| {
            matches!(state, ServerState::Idle | ServerState::Shared)
                && observed
                    .views
                    .iter()
                    .any(|v| &v.name == name && v.state == ServerState::Starting)
        })
    });
    let now = Instant::now();
    ctx.backoff.observe(key, failed_starts, became_healthy, now);
    let wants = decision.plans().any(|(_, p)| p.create > 0);
    let (wait, failures) = ctx.backoff.wait(key, now).filter(|_| wants)?;
    problems.note(
        "StartBackoff",
        format!(
            "{failures} servers in a row failed to start; the next one starts in {}s (see the server pods' Events)",
            wait.as_secs()
        ),
    );
    decision.pool.create = 0;
    if let Some(endpoint) = decision.endpoint.as_mut() {
        endpoint.create = 0;
    }
    Some(wait)
}
