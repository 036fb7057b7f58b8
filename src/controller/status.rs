//! The cluster's status, computed from the pool plan. Pure.

use jiff::Timestamp;

use super::conditions::set_condition;
use super::plan::PoolPlan;
use crate::builders::labels::{ServerState, endpoint, server_selector};
use crate::crd::{ServerCounts, SparkConnectCluster, SparkConnectClusterStatus};

/// Condition: the cluster's endpoint serves (or, for a pool-only cluster, the pool has a server).
pub const READY: &str = "Ready";
/// Condition: the pool holds its idle target.
pub const POOL_READY: &str = "PoolReady";
/// Condition: something needs a person: an invalid spec or failing servers.
pub const DEGRADED: &str = "Degraded";

/// Counts servers by state after the plan.
pub fn server_counts(plan: &PoolPlan) -> ServerCounts {
    let count = |state| plan.count(state) as i32;
    ServerCounts {
        total: plan.states.len() as i32 + plan.create as i32,
        starting: count(ServerState::Starting),
        idle: count(ServerState::Idle),
        shared: count(ServerState::Shared),
        claimed: count(ServerState::Claimed),
        unhealthy: count(ServerState::Unhealthy),
    }
}

/// The status for a cluster whose spec is valid, from its pool counts.
pub fn healthy_status(
    cluster: &SparkConnectCluster,
    previous: Option<&SparkConnectClusterStatus>,
    counts: ServerCounts,
    problems: &[String],
    now: Timestamp,
) -> SparkConnectClusterStatus {
    let spec = &cluster.spec;
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.selector = Some(server_selector(name));

    let (ready, reason, message) = if spec.shared > 0 {
        if counts.shared > 0 {
            (
                true,
                "SharedServerReady",
                format!(
                    "{} of {} shared servers serve the endpoint",
                    counts.shared, spec.shared
                ),
            )
        } else {
            (
                false,
                "NoSharedServer",
                "no healthy server serves the endpoint yet".to_string(),
            )
        }
    } else if counts.idle > 0 || spec.hot_pool.idle == 0 {
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
    };
    set_condition(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        generation,
        now,
    );
    let pool_full = counts.idle >= spec.hot_pool.idle;
    set_condition(
        &mut status.conditions,
        POOL_READY,
        pool_full,
        if pool_full { "PoolFull" } else { "PoolFilling" },
        format!(
            "{} of {} idle servers ready, {} starting",
            counts.idle, spec.hot_pool.idle, counts.starting
        ),
        generation,
        now,
    );
    let degraded = !problems.is_empty();
    set_condition(
        &mut status.conditions,
        DEGRADED,
        degraded,
        if degraded {
            "ServerProblems"
        } else {
            "AsExpected"
        },
        if degraded {
            problems.join("; ")
        } else {
            "no problems".to_string()
        },
        generation,
        now,
    );
    status.phase = if ready { "Ready" } else { "Pending" }.into();
    status.endpoint = (spec.shared > 0).then(|| endpoint(name, namespace, spec.server.port));
    status.servers = counts;
    status
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
    status.phase = "Degraded".into();
    status
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

    #[test]
    fn ready_when_the_shared_server_serves() {
        let c = cluster();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = healthy_status(&c, None, counts(0, 0, 2), &[], t);
        assert_eq!(s.phase, "Pending");
        assert!(!is_true(&s.conditions, READY));
        let s = healthy_status(&c, Some(&s), counts(1, 1, 0), &[], t);
        assert_eq!(s.phase, "Ready");
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
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let a = healthy_status(&c, None, counts(1, 1, 0), &[], t0);
        let b = healthy_status(&c, Some(&a), counts(1, 1, 0), &[], t1);
        assert_eq!(a, b, "a second reconcile must not need a status write");
    }

    #[test]
    fn invalid_spec_degrades_and_keeps_counts() {
        let c = cluster();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ok = healthy_status(&c, None, counts(1, 1, 0), &[], t);
        let bad = invalid_status(&c, Some(&ok), "invalid spec: x", t);
        assert_eq!(bad.phase, "Degraded");
        assert!(is_true(&bad.conditions, DEGRADED));
        assert_eq!(bad.servers, ok.servers);
    }
}
