//! Report: the cluster's status (computed purely from the decision and the problems found),
//! written only when it changed, plus Events for new problems and the server-count metrics.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::builders::labels::{ServerRole, ServerState, endpoint, server_selector};
use crate::controller::apply::{Precondition, write_status_if_changed};
use crate::controller::conditions::set_condition;
use crate::controller::context::Context;
use crate::controller::pool::{Decision, Wanted};
use crate::crd::{ClusterPhase, ServerCounts, SparkConnectCluster, SparkConnectClusterStatus};
use crate::error::Error;
use crate::schedule::Scheduled;
use crate::validate::ValidCluster;

/// Condition: the cluster's endpoint serves (or, for a pool-only cluster, the pool has a server).
pub const READY: &str = "Ready";
/// Condition: the pool holds its idle target.
pub const POOL_READY: &str = "PoolReady";
/// Condition: something needs a person: an invalid spec, refused objects, failing servers.
pub const DEGRADED: &str = "Degraded";

/// Longest Degraded message kept in status.
const MAX_MESSAGE: usize = 4096;

/// Something a person must look at, found while reconciling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition and Event reason.
    pub reason: &'static str,
    /// What is wrong, naming the object.
    pub message: String,
}

/// The problems of one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// Keeps an API refusal (400/403/409/422, a foreign object in the way) as a problem to
    /// report; any other error is returned to be retried.
    pub fn absorb(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(e) => match e.refusal() {
                Some(refusal) => {
                    self.note(refusal.reason(), e.brief());
                    Ok(())
                }
                None => Err(e),
            },
        }
    }

    /// Records a problem.
    pub fn note(&mut self, reason: &'static str, message: String) {
        self.list.push(Problem { reason, message });
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems found.
    pub fn list(&self) -> &[Problem] {
        &self.list
    }
}

/// Counts servers by state after the decision; the endpoint's standby is counted apart.
pub fn server_counts(decision: &Decision) -> ServerCounts {
    let mut counts = ServerCounts::default();
    for (role, plan) in decision.plans() {
        let count = |state| i32::try_from(plan.count(state)).unwrap_or(i32::MAX);
        counts.total += i32::try_from(plan.states.len() + plan.create).unwrap_or(i32::MAX);
        counts.starting += count(ServerState::Starting);
        counts.shared += count(ServerState::Shared);
        counts.claimed += count(ServerState::Claimed);
        counts.unhealthy += count(ServerState::Unhealthy);
        match role {
            ServerRole::Endpoint => counts.standby += count(ServerState::Idle),
            ServerRole::Pool => counts.idle += count(ServerState::Idle),
        }
    }
    counts
}

/// What the status says beyond the counts.
#[derive(Clone, Debug)]
pub struct Summary<'a> {
    /// Servers by state.
    pub counts: ServerCounts,
    /// The idle target the pool holds (autoscaled or `hotPool.idle`, at least the schedule's).
    pub idle_target: usize,
    /// The autoscaler's target (when it runs) and the schedule's.
    pub wanted: Wanted,
    /// What needs a person.
    pub problems: &'a Problems,
    /// The cluster token's Secret (token mode).
    pub token_secret: Option<String>,
    /// Spark version reported by a server.
    pub spark_version: Option<String>,
    /// How long the newest warmed-up server's warm-up took.
    pub last_warmup: Option<Duration>,
    /// How long a new server takes to start, as the autoscaler measured (or kept) it.
    pub start_time: Option<Duration>,
    /// Something held back (a refill) wants another look this soon.
    pub look_again_within: Option<Duration>,
}

/// The status for a cluster whose spec is valid.
pub fn healthy_status(
    cluster: &SparkConnectCluster,
    previous: Option<&SparkConnectClusterStatus>,
    summary: Summary,
    now: Timestamp,
) -> SparkConnectClusterStatus {
    let spec = &cluster.spec;
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let counts = summary.counts;
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.selector = Some(server_selector(name));

    let (ready, reason, message) = readiness(spec.shared, &counts, summary.idle_target);
    set_condition(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        generation,
        now,
    );
    let target = i32::try_from(summary.idle_target).unwrap_or(i32::MAX);
    let pool_full = counts.idle >= target;
    set_condition(
        &mut status.conditions,
        POOL_READY,
        pool_full,
        if pool_full { "PoolFull" } else { "PoolFilling" },
        format!(
            "{} of {target} idle servers ready, {} starting",
            counts.idle, counts.starting
        ),
        generation,
        now,
    );
    let (degraded, reason, message) = degradation(summary.problems);
    set_condition(
        &mut status.conditions,
        DEGRADED,
        degraded,
        reason,
        message,
        generation,
        now,
    );
    status.phase = if ready {
        ClusterPhase::Ready
    } else {
        ClusterPhase::Pending
    };
    status.endpoint = (spec.shared > 0).then(|| endpoint(name, namespace, spec.server.port));
    status.servers = counts;
    status.idle_target = summary
        .wanted
        .autoscaled
        .map(|t| i32::try_from(t).unwrap_or(i32::MAX));
    let scheduled = summary.wanted.scheduled;
    status.scheduled_idle = scheduled
        .window
        .map(|_| i32::try_from(scheduled.idle).unwrap_or(i32::MAX));
    status.token_secret = summary.token_secret;
    if summary.spark_version.is_some() {
        status.spark_version = summary.spark_version;
    }
    if let Some(took) = summary.last_warmup {
        status.last_warmup_millis = Some(millis(took));
    }
    if let Some(start_time) = summary.start_time {
        status.startup_millis = Some(millis(start_time));
    }
    status
}

/// A duration in whole milliseconds, as the status gives them.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The Ready condition: a shared cluster is ready while a healthy server serves its endpoint;
/// a pool-only one while it has an idle server (or wants none).
fn readiness(
    shared: i32,
    counts: &ServerCounts,
    idle_target: usize,
) -> (bool, &'static str, String) {
    if shared > 0 {
        if counts.shared > 0 {
            (
                true,
                "SharedServerReady",
                format!(
                    "{} of {} shared servers serve the endpoint",
                    counts.shared, shared
                ),
            )
        } else {
            (
                false,
                "NoSharedServer",
                "no healthy server serves the endpoint yet".to_string(),
            )
        }
    } else if counts.idle > 0 || idle_target == 0 {
        (
            true,
            "PoolServing",
            "pool-only cluster: claims are served from the pool".to_string(),
        )
    } else {
        (
            false,
            "PoolEmpty",
            "pool-only cluster with no idle server yet".to_string(),
        )
    }
}

/// The Degraded condition: every problem's message, joined and cut to [`MAX_MESSAGE`]; the
/// first problem's reason.
fn degradation(problems: &Problems) -> (bool, &'static str, String) {
    let problems = problems.list();
    match problems.first() {
        None => (false, "AsExpected", "no problems".to_string()),
        Some(first) => {
            let all: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            let mut message = all.join("; ");
            if message.len() > MAX_MESSAGE {
                let cut = (0..=MAX_MESSAGE)
                    .rev()
                    .find(|i| message.is_char_boundary(*i))
                    .unwrap_or(0);
                message.truncate(cut);
            }
            (true, first.reason, message)
        }
    }
}

/// The status for a cluster whose spec cannot be run.
pub fn invalid_status(
    cluster: &SparkConnectCluster,
    previous: Option<&SparkConnectClusterStatus>,
    problem: &str,
    now: Timestamp,
) -> SparkConnectClusterStatus {
    let generation = cluster.metadata.generation;
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        DEGRADED,
        true,
        "InvalidSpec",
        problem.to_string(),
        generation,
        now,
    );
    status.phase = ClusterPhase::Degraded;
    status
}

/// Reports an invalid spec: condition and Event, then waits for the user to change it.
pub async fn report_invalid(
    cluster: &SparkConnectCluster,
    ctx: &Context,
    error: &Error,
) -> Result<Action, Error> {
    let message = error.to_string();
    let status = invalid_status(cluster, cluster.status.as_ref(), &message, Timestamp::now());
    if write_status_if_changed(
        &ctx.client,
        cluster,
        cluster.status.as_ref(),
        &status,
        Precondition::None,
    )
    .await?
    {
        ctx.event(cluster, EventType::Warning, "InvalidSpec", &message);
    }
    Ok(Action::await_change())
}

/// Writes the status (when it changed), publishes new problems as Events, sets the metrics, and
/// says when to look again.
pub async fn report(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    decision: &Decision,
    summary: Summary<'_>,
    key: &str,
) -> Result<Action, Error> {
    let cluster = valid.cluster;
    for (state, value) in [
        (ServerState::Starting, summary.counts.starting),
        (ServerState::Idle, summary.counts.idle),
        (ServerState::Shared, summary.counts.shared),
        (ServerState::Claimed, summary.counts.claimed),
        (ServerState::Unhealthy, summary.counts.unhealthy),
    ] {
        ctx.metrics
            .set_servers(valid.namespace, valid.name, state.as_str(), value);
    }
    ctx.metrics
        .claims_waiting
        .with_label_values(&[valid.namespace, valid.name])
        .set(i64::try_from(decision.claims.waiting.len()).unwrap_or(i64::MAX));
    let problems = summary.problems.clone();
    let look_again_within = summary.look_again_within;
    let scheduled = summary.wanted.scheduled;
    let idle_target = summary.idle_target;
    let status = healthy_status(cluster, cluster.status.as_ref(), summary, Timestamp::now());
    let before = degraded_message(cluster.status.as_ref());
    let after = degraded_message(Some(&status));
    write_status_if_changed(
        &ctx.client,
        cluster,
        cluster.status.as_ref(),
        &status,
        Precondition::None,
    )
    .await?;
    let scheduled_before = cluster.status.as_ref().and_then(|s| s.scheduled_idle);
    if status.scheduled_idle != scheduled_before {
        let (reason, note) = schedule_note(&scheduled, idle_target);
        ctx.event(cluster, EventType::Normal, reason, &note);
    }
    if after.is_some() && after != before {
        for problem in problems.list() {
            ctx.event(
                cluster,
                EventType::Warning,
                problem.reason,
                &problem.message,
            );
        }
    }
    let retry_after_problems = if problems.is_empty() {
        ctx.retries.succeeded(key);
        None
    } else {
        Some(ctx.retries.failed(key))
    };
    let busy = decision
        .plans()
        .any(|(_, p)| p.create > 0 || !p.remove.is_empty() || p.count(ServerState::Starting) > 0)
        || !decision.claims.waiting.is_empty()
        || decision.idle_target > valid.size.idle;
    Ok(Action::requeue(next_look(
        retry_after_problems,
        busy,
        look_again_within,
    )))
}

/// The Event of a schedule window opening (its servers starting ahead of it) or closing: its
/// reason and note (one reason each, since Events of one reason are counted as a series).
fn schedule_note(scheduled: &Scheduled, idle_target: usize) -> (&'static str, String) {
    match scheduled.window {
        Some(index) => (
            "ScheduleWindowOpen",
            format!(
                "hotPool.schedule[{index}] opens: at least {} idle servers (started ahead of the window by the servers' start-up time); idle target {idle_target}",
                scheduled.idle
            ),
        ),
        None => (
            "ScheduleWindowClosed",
            format!("no hotPool.schedule window is open: idle target {idle_target}"),
        ),
    }
}

/// When the cluster is looked at again: after the retry delay while problems last, else soon
/// while the pool changes and rarely when it is still; never later than something held back
/// (a refill) asked for, whatever else holds.
fn next_look(
    retry_after_problems: Option<Duration>,
    busy: bool,
    look_again_within: Option<Duration>,
) -> Duration {
    let next = retry_after_problems.unwrap_or(if busy {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(300)
    });
    look_again_within.map_or(next, |d| d.min(next))
}

/// The Degraded message of a status, when it is degraded.
fn degraded_message(status: Option<&SparkConnectClusterStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| c.message.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::is_true;
    use crate::test_support::cluster;

    fn counts(shared: i32, idle: i32, starting: i32) -> ServerCounts {
        ServerCounts {
            total: shared + idle + starting,
            starting,
            idle,
            shared,
            ..ServerCounts::default()
        }
    }

    fn summary(counts: ServerCounts, problems: &Problems) -> Summary<'_> {
        Summary {
            counts,
            idle_target: 1,
            wanted: Wanted::default(),
            problems,
            token_secret: None,
            spark_version: None,
            last_warmup: None,
            start_time: None,
            look_again_within: None,
        }
    }

    #[test]
    fn a_held_refill_is_looked_at_again_even_while_problems_back_off() {
        let held = Some(Duration::from_millis(250));
        assert_eq!(
            next_look(Some(Duration::from_secs(80)), false, held),
            Duration::from_millis(250)
        );
        assert_eq!(
            next_look(Some(Duration::from_secs(80)), true, None),
            Duration::from_secs(80)
        );
        assert_eq!(next_look(None, true, None), Duration::from_secs(5));
        assert_eq!(next_look(None, false, held), Duration::from_millis(250));
    }

    #[test]
    fn ready_when_the_shared_server_serves() {
        let c = cluster();
        let none = Problems::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = healthy_status(&c, None, summary(counts(0, 0, 2), &none), t);
        assert_eq!(s.phase, ClusterPhase::Pending);
        assert!(!is_true(&s.conditions, READY));
        let s = healthy_status(&c, Some(&s), summary(counts(1, 1, 0), &none), t);
        assert_eq!(s.phase, ClusterPhase::Ready);
        assert!(is_true(&s.conditions, READY) && is_true(&s.conditions, POOL_READY));
        assert!(!is_true(&s.conditions, DEGRADED));
        assert_eq!(
            s.endpoint.as_deref(),
            Some("sc://analytics.data.svc.cluster.local:15002")
        );
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn unchanged_inputs_give_an_equal_status() {
        let c = cluster();
        let none = Problems::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let a = healthy_status(&c, None, summary(counts(1, 1, 0), &none), t0);
        let b = healthy_status(&c, Some(&a), summary(counts(1, 1, 0), &none), t1);
        assert_eq!(a, b, "a second reconcile must not need a status write");
    }

    #[test]
    fn pool_ready_measures_against_the_target_the_pool_is_filled_to() {
        let c = cluster();
        let none = Problems::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut s = summary(counts(1, 1, 2), &none);
        s.idle_target = 3;
        s.wanted.autoscaled = Some(3);
        let status = healthy_status(&c, None, s, t);
        assert!(!is_true(&status.conditions, POOL_READY));
        assert_eq!(status.idle_target, Some(3));
    }

    #[test]
    fn an_open_schedule_window_is_in_the_status_and_its_event_names_it() {
        let c = cluster();
        let none = Problems::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut s = summary(counts(1, 1, 2), &none);
        s.idle_target = 4;
        s.wanted.scheduled = Scheduled {
            idle: 4,
            window: Some(1),
            next_change: Some(Duration::from_secs(60)),
        };
        let status = healthy_status(&c, None, s.clone(), t);
        assert_eq!(status.scheduled_idle, Some(4));
        assert!(!is_true(&status.conditions, POOL_READY), "1 of 4 idle");
        assert_eq!(status.idle_target, None, "the autoscaler is off");
        let (reason, note) = schedule_note(&s.wanted.scheduled, 4);
        assert_eq!(reason, "ScheduleWindowOpen");
        assert!(
            note.contains("hotPool.schedule[1] opens: at least 4"),
            "{note}"
        );
        s.wanted.scheduled = Scheduled::default();
        s.idle_target = 1;
        assert_eq!(
            healthy_status(&c, Some(&status), s.clone(), t).scheduled_idle,
            None
        );
        let (reason, note) = schedule_note(&s.wanted.scheduled, 1);
        assert_eq!(reason, "ScheduleWindowClosed");
        assert!(note.contains("idle target 1"), "{note}");
    }

    #[test]
    fn a_refused_object_degrades_the_cluster_naming_it() {
        let c = cluster();
        let mut problems = Problems::default();
        problems
            .absorb(Err(Error::NotOwned {
                kind: "Service",
                name: "kubernetes".into(),
            }))
            .unwrap();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = healthy_status(&c, None, summary(counts(0, 0, 0), &problems), t);
        let degraded = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "NameConflict");
        assert!(degraded.message.contains("Service kubernetes"));
    }

    #[test]
    fn a_transient_error_is_not_absorbed() {
        let mut problems = Problems::default();
        let err = Error::TimedOut(Duration::from_secs(1));
        assert!(problems.absorb(Err(err)).is_err());
        assert!(problems.is_empty());
    }

    #[test]
    fn invalid_spec_degrades_and_keeps_counts() {
        let c = cluster();
        let none = Problems::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ok = healthy_status(&c, None, summary(counts(1, 1, 0), &none), t);
        let bad = invalid_status(&c, Some(&ok), "invalid spec: x", t);
        assert_eq!(bad.phase, ClusterPhase::Degraded);
        assert!(is_true(&bad.conditions, DEGRADED));
        assert_eq!(bad.servers, ok.servers);
    }
}
