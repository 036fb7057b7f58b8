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
use crate::controller::pool::autoscale::{DEFAULT_START_TIME, Decision as AutoscaleDecision};
use crate::controller::pool::plan::RemoveReason;
use crate::controller::pool::{Decision, Wanted};
use crate::validate::ValidCluster;

/// The autoscaler's idle target (when autoscaling is on) and the schedule's for this round;
/// the autoscaler's changes become Events and a metric. A schedule window starts its servers
/// ahead of it by their measured start-up time, the last warm-up and one probe period.
pub fn wanted(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    key: &str,
    observed: &Observed,
    now: Timestamp,
) -> Wanted {
    let (start_time, autoscaled) = track_demand(valid, ctx, key, observed, now);
    let lead = start_time + observed.last_warmup.unwrap_or_default() + valid.timings.probe_period;
    Wanted {
        autoscaled: autoscaled.map(|(target, decision)| announce(valid, ctx, target, decision)),
        scheduled: valid.schedule.at(now, lead),
    }
}

/// Feeds the cluster's demand with this round's claims and start-up times (measured whether or
/// not it autoscales); returns the start-up time and, when autoscaling, its target.
fn track_demand(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    key: &str,
    observed: &Observed,
    now: Timestamp,
) -> (Duration, Option<(usize, Option<AutoscaleDecision>)>) {
    let size = valid.size;
    let warmups: Vec<Duration> = observed
        .views
        .iter()
        .filter(|v| v.state == ServerState::Starting && v.healthy)
        .filter_map(|v| Duration::try_from(now.duration_since(v.created)).ok())
        .collect();
    let claims: Vec<String> = observed.claims.keys().cloned().collect();
    let instant = Instant::now();
    let hit_rate = f64::from(size.hit_rate_percent) / 100.0;
    ctx.autoscaler
        .with(key, |demand| {
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
            (demand.start_time(), target)
        })
        .unwrap_or((DEFAULT_START_TIME, None))
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
