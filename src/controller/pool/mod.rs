//! The pool: what a cluster's servers should be (plan), what happens to its claims (claims),
//! who gets which idle server (allocator), how many idle servers demand needs (autoscale), and
//! how fast failed starts are retried (backoff). `decide` joins the pure parts into one decision.

pub mod allocator;
pub mod autoscale;
pub mod backoff;
pub mod claims;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::builders::labels::{ServerRole, ServerState};
use crate::schedule::Scheduled;
pub use crate::validate::PoolSize;
use crate::validate::Timings;
use claims::{ClaimLimits, ClaimPlan, ClaimView, ClaimedBy, plan_claims};
use plan::{PoolPlan, PoolTargets, ServerView};

/// Everything the decision reads, observed from the stores and the prober.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The cluster's own live servers.
    pub servers: Vec<ServerView>,
    /// The cluster's claims.
    pub claims: &'a [ClaimView],
    /// Claimed server → the claim it records.
    pub claimed_servers: BTreeMap<String, ClaimedBy>,
    /// Servers this process handed out whose bind the store does not show yet.
    pub handed_out: &'a BTreeMap<String, String>,
    /// Pool sizes.
    pub size: PoolSize,
    /// What asks for idle servers besides `hotPool.idle`.
    pub wanted: Wanted,
    /// Hashes current servers are built from.
    pub hashes: &'a Hashes,
    /// Token mode: endpoint and pool servers hold different tokens and are planned apart.
    pub split_roles: bool,
    /// Durations of the spec.
    pub timings: Timings,
}

/// What asks for idle servers besides `hotPool.idle`: the autoscaler and the schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The autoscaler's idle target (when autoscaling is on).
    pub autoscaled: Option<usize>,
    /// What the open schedule windows ask for, and when that changes.
    pub scheduled: Scheduled,
}

impl Wanted {
    /// The idle target these make of the pool's sizes, with `waiting` claims.
    pub fn idle_target(&self, size: PoolSize, waiting: usize) -> usize {
        size.idle_target(self.autoscaled, self.scheduled.idle, waiting)
    }
}

/// Hashes of what current servers are built from, by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashes {
    /// Endpoint servers: the spec and the cluster token.
    pub endpoint: String,
    /// Pool servers: the spec (each has its own token).
    pub pool: String,
}

impl Hashes {
    /// The hash for a role.
    pub fn of(&self, role: ServerRole) -> &str {
        match role {
            ServerRole::Endpoint => &self.endpoint,
            ServerRole::Pool => &self.pool,
        }
    }
}

/// What to do, in one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Claims that end, waiting claims, claimed servers to retire.
    pub claims: ClaimPlan,
    /// The shared endpoint's servers and their standby (token mode only; otherwise the pool
    /// plan covers the shared servers too).
    pub endpoint: Option<PoolPlan>,
    /// The pool's servers: create, relabel, remove.
    pub pool: PoolPlan,
    /// The idle target the pool was planned for.
    pub idle_target: usize,
}

impl Decision {
    /// Both plans with the role new servers of each get.
    pub fn plans(&self) -> impl Iterator<Item = (ServerRole, &PoolPlan)> {
        self.endpoint
            .iter()
            .map(|p| (ServerRole::Endpoint, p))
            .chain(std::iter::once((ServerRole::Pool, &self.pool)))
    }
}

/// Decides the claims' and the pool's next step together. Pure.
pub fn decide(inputs: Inputs, now: Timestamp) -> Decision {
    let alive: BTreeSet<String> = inputs
        .servers
        .iter()
        .filter(|v| !v.exited)
        .map(|v| v.name.clone())
        .collect();
    let mut claimed = inputs.claimed_servers.clone();
    claimed.extend(inputs.handed_out.iter().map(|(server, claim)| {
        let by = ClaimedBy {
            name: claim.clone(),
            uid: String::new(),
        };
        (server.clone(), by)
    }));
    let claims = plan_claims(
        inputs.claims,
        &claimed,
        &alive,
        ClaimLimits {
            wait_timeout: inputs.timings.claim_timeout,
        },
        now,
    );
    // Servers being retired leave the pool; servers handed out count as claimed.
    let views: Vec<ServerView> = inputs
        .servers
        .into_iter()
        .filter(|v| !claims.retire.contains(&v.name))
        .map(|mut v| {
            if inputs.handed_out.contains_key(&v.name) {
                v.state = ServerState::Claimed;
                v.taken_for = None;
            }
            v
        })
        .collect();
    let size = inputs.size;
    let idle_target = inputs.wanted.idle_target(size, claims.waiting.len());
    let targets = |shared, idle, role, max_servers| PoolTargets {
        shared,
        idle,
        spec_hash: inputs.hashes.of(role),
        startup_deadline: inputs.timings.startup_deadline,
        max_idle_age: inputs.timings.max_idle_age,
        max_servers,
    };
    if !inputs.split_roles {
        let pool_targets = targets(size.shared, idle_target, ServerRole::Pool, size.max_servers);
        return Decision {
            pool: plan::plan(&views, pool_targets, now),
            endpoint: None,
            claims,
            idle_target,
        };
    }
    let (endpoint_views, pool_views): (Vec<ServerView>, Vec<ServerView>) = views
        .into_iter()
        .partition(|v| v.role == ServerRole::Endpoint);
    // One warm standby holds the cluster token, so a failover never waits for a cold start.
    let standby = usize::from(size.shared > 0);
    let endpoint = plan::plan(
        &endpoint_views,
        targets(size.shared, standby, ServerRole::Endpoint, size.max_servers),
        now,
    );
    let endpoint_members = endpoint.states.len() + endpoint.create;
    let pool = plan::plan(
        &pool_views,
        targets(
            0,
            idle_target,
            ServerRole::Pool,
            size.max_servers.saturating_sub(endpoint_members),
        ),
        now,
    );
    Decision {
        endpoint: Some(endpoint),
        pool,
        claims,
        idle_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClaimPhase;
    use std::time::Duration;

    fn now() -> Timestamp {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }
    fn timings() -> Timings {
        Timings {
            probe_period: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(3),
            startup_deadline: Duration::from_secs(600),
            max_idle_age: None,
            scale_down_delay: Duration::from_secs(300),
            claim_timeout: Duration::from_secs(600),
            refill_delay: Duration::from_secs(2),
        }
    }
    fn server(name: &str, state: ServerState) -> ServerView {
        ServerView {
            name: name.into(),
            state,
            role: ServerRole::Pool,
            healthy: true,
            auth_rejected: false,
            exited: false,
            spec_hash: "h".into(),
            created: now() - jiff::SignedDuration::from_secs(60),
            taken_for: None,
        }
    }
    fn hashes() -> Hashes {
        Hashes {
            endpoint: "h".into(),
            pool: "h".into(),
        }
    }
    fn size(idle: usize) -> PoolSize {
        PoolSize {
            shared: 0,
            idle,
            min: 0,
            max: 10,
            max_servers: 100,
            max_waiting: 100,
            autoscale: false,
            hit_rate_percent: 99,
        }
    }
    fn waiting(name: &str) -> ClaimView {
        ClaimView {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: now(),
            phase: ClaimPhase::Pending,
            server: None,
            bound_at: None,
            ttl: None,
        }
    }

    /// One decision's inputs, the rest defaulted.
    struct Case<'a> {
        servers: Vec<ServerView>,
        claims: &'a [ClaimView],
        handed_out: &'a BTreeMap<String, String>,
        size: PoolSize,
        hashes: &'a Hashes,
        split_roles: bool,
        autoscaled: Option<usize>,
        scheduled: usize,
    }

    fn run(case: Case) -> Decision {
        decide(
            Inputs {
                servers: case.servers,
                claims: case.claims,
                claimed_servers: BTreeMap::new(),
                handed_out: case.handed_out,
                size: case.size,
                wanted: Wanted {
                    autoscaled: case.autoscaled,
                    scheduled: Scheduled {
                        idle: case.scheduled,
                        window: (case.scheduled > 0).then_some(0),
                        next_change: None,
                    },
                },
                hashes: case.hashes,
                split_roles: case.split_roles,
                timings: timings(),
            },
            now(),
        )
    }

    #[test]
    fn waiting_claims_grow_the_pool_at_once() {
        let claims = [waiting("a"), waiting("b")];
        let d = run(Case {
            servers: vec![server("s1", ServerState::Idle)],
            claims: &claims,
            handed_out: &BTreeMap::new(),
            size: size(1),
            hashes: &hashes(),
            split_roles: false,
            autoscaled: None,
            scheduled: 0,
        });
        assert_eq!(d.idle_target, 3);
        assert_eq!(d.pool.create, 2);
    }

    #[test]
    fn a_server_handed_out_but_not_yet_stored_as_claimed_is_not_scaled_down_or_retired() {
        let handed = BTreeMap::from([("s1".to_string(), "a".to_string())]);
        let mut bound = waiting("a");
        bound.phase = ClaimPhase::Bound;
        bound.server = Some("s1".into());
        let claims = [bound];
        let d = run(Case {
            servers: vec![server("s1", ServerState::Idle)],
            claims: &claims,
            handed_out: &handed,
            size: size(0),
            hashes: &hashes(),
            split_roles: false,
            autoscaled: None,
            scheduled: 0,
        });
        assert!(d.pool.remove.is_empty(), "{:?}", d.pool.remove);
        assert!(d.claims.retire.is_empty());
        assert!(d.claims.end.is_empty(), "the claim is not lost");
    }

    #[test]
    fn in_token_mode_the_endpoint_keeps_a_standby_of_its_own_and_claims_use_the_pool() {
        let mut endpoint = server("e1", ServerState::Shared);
        endpoint.role = ServerRole::Endpoint;
        let d = run(Case {
            servers: vec![endpoint, server("p1", ServerState::Idle)],
            claims: &[],
            handed_out: &BTreeMap::new(),
            size: PoolSize {
                shared: 1,
                ..size(1)
            },
            hashes: &hashes(),
            split_roles: true,
            autoscaled: None,
            scheduled: 0,
        });
        let endpoint = d.endpoint.unwrap();
        assert_eq!(endpoint.create, 1, "a standby with the cluster token");
        assert_eq!(endpoint.count(ServerState::Shared), 1);
        assert_eq!(d.pool.create, 0);
        assert!(
            d.pool.relabel.is_empty(),
            "a pool server never takes the endpoint: it holds another token"
        );
    }

    #[test]
    fn a_rotated_cluster_token_rolls_the_endpoint_but_not_the_pool() {
        let mut endpoint = server("e1", ServerState::Idle);
        endpoint.role = ServerRole::Endpoint;
        let rotated = Hashes {
            endpoint: "h-new-token".into(),
            pool: "h".into(),
        };
        let d = run(Case {
            servers: vec![endpoint, server("p1", ServerState::Idle)],
            claims: &[],
            handed_out: &BTreeMap::new(),
            size: PoolSize {
                shared: 1,
                ..size(1)
            },
            hashes: &rotated,
            split_roles: true,
            autoscaled: None,
            scheduled: 0,
        });
        let endpoint = d.endpoint.unwrap();
        assert_eq!(endpoint.remove["e1"], plan::RemoveReason::Outdated);
        assert_eq!(endpoint.create, 2);
        assert!(d.pool.remove.is_empty());
    }

    #[test]
    fn an_open_schedule_window_raises_the_idle_target_above_the_autoscalers() {
        let idle = |autoscaled, scheduled| {
            let d = run(Case {
                servers: vec![],
                claims: &[],
                handed_out: &BTreeMap::new(),
                size: size(1),
                hashes: &hashes(),
                split_roles: false,
                autoscaled,
                scheduled,
            });
            d.pool.create
        };
        assert_eq!(idle(None, 0), 1, "hotPool.idle alone");
        assert_eq!(idle(None, 6), 6, "the window's idle servers");
        assert_eq!(idle(Some(3), 6), 6, "the window, above the autoscaler");
        assert_eq!(idle(Some(8), 6), 8, "the autoscaler, above the window");
        assert_eq!(idle(None, 50), 10, "capped by hotPool.max");
    }

    #[test]
    fn sizes_are_read_once_and_never_negative() {
        let mut spec: crate::crd::SparkConnectClusterSpec =
            serde_json::from_value(serde_json::json!({"image": "x"})).unwrap();
        spec.hot_pool.idle = -5;
        let s = PoolSize::of(&spec);
        assert_eq!(s.idle, 0);
        assert_eq!(s.idle_target(Some(4), 0, 30), 20, "capped by hotPool.max");
    }
}
