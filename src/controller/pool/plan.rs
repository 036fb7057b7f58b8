//! The pool decision: from the servers that exist to what to create, relabel and delete.
//! Pure, so every rule of the pool is unit-tested without an apiserver.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::builders::labels::{ServerRole, ServerState};

/// What the reconciler knows about one server pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerView {
    /// Pod (and Service) name.
    pub name: String,
    /// The state its label records.
    pub state: ServerState,
    /// Endpoint or pool (the token it holds, in token mode).
    pub role: ServerRole,
    /// Passes its health check now.
    pub healthy: bool,
    /// Refuses the operator's token: kept (a restart would not help) and reported.
    pub auth_rejected: bool,
    /// The process has exited (pod Failed or Succeeded).
    pub exited: bool,
    /// Hash of the spec it was built from.
    pub spec_hash: String,
    /// Pod creation time.
    pub created: Timestamp,
    /// What the cluster took it for in its bind ledger (Shared or Retiring) when its label does
    /// not say so yet: the change the entry began is carried through.
    pub taken_for: Option<ServerState>,
}

impl ServerView {
    /// The state the plan goes by: what the cluster took it for, else its label.
    fn planned_state(&self) -> ServerState {
        self.taken_for.unwrap_or(self.state)
    }
}

/// Why a server is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// The server process exited.
    Exited,
    /// It was marked retiring.
    Retired,
    /// It did not become healthy within the startup deadline.
    StartupTimeout,
    /// An idle server failed its health checks.
    Unhealthy,
    /// A shared server failed and an idle server took over.
    FailedOver,
    /// Built from an older spec.
    Outdated,
    /// More servers than the targets need.
    ScaledDown,
    /// Idle for longer than maxIdleAge.
    Recycled,
}

impl RemoveReason {
    /// Event reason for this removal.
    pub fn event_reason(self) -> &'static str {
        match self {
            Self::Exited => "ServerExited",
            Self::Retired => "ServerRetired",
            Self::StartupTimeout => "ServerStartTimeout",
            Self::Unhealthy => "ServerUnhealthy",
            Self::FailedOver => "SharedServerFailedOver",
            Self::Outdated => "ServerOutdated",
            Self::ScaledDown => "ServerScaledDown",
            Self::Recycled => "ServerRecycled",
        }
    }

    /// Whether the removal means something went wrong.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Self::Exited | Self::StartupTimeout | Self::Unhealthy | Self::FailedOver
        )
    }
}

/// Targets and timings the plan works toward.
#[derive(Clone, Copy, Debug)]
pub struct PoolTargets<'a> {
    /// Servers behind the shared Service.
    pub shared: usize,
    /// Idle servers to keep.
    pub idle: usize,
    /// Current spec hash.
    pub spec_hash: &'a str,
    /// Time allowed to become healthy.
    pub startup_deadline: Duration,
    /// Recycle idle servers older than this.
    pub max_idle_age: Option<Duration>,
    /// Most servers the cluster may have at once, claimed ones included.
    pub max_servers: usize,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolPlan {
    /// New servers to create.
    pub create: usize,
    /// Servers whose state label must change, with the new state.
    pub relabel: BTreeMap<String, ServerState>,
    /// Servers to delete, and why.
    pub remove: BTreeMap<String, RemoveReason>,
    /// The state of every server that stays, after the plan.
    pub states: BTreeMap<String, ServerState>,
    /// Servers the targets need that the cap (`hotPool.maxServers`) keeps from starting.
    pub capped: usize,
}

impl PoolPlan {
    /// Marks server `s` for deletion.
    fn remove_server(&mut self, s: &ServerView, reason: RemoveReason) {
        self.remove.insert(s.name.clone(), reason);
    }

    /// How many kept servers (plus those to create) are in `state`.
    pub fn count(&self, state: ServerState) -> usize {
        self.states.values().filter(|s| **s == state).count()
            + if state == ServerState::Starting {
                self.create
            } else {
                0
            }
    }
}

fn age(now: Timestamp, created: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(created)).unwrap_or_default()
}

/// Decides the pool's next step. Claimed servers are never touched here.
pub fn plan(servers: &[ServerView], targets: PoolTargets, now: Timestamp) -> PoolPlan {
    let mut plan = PoolPlan::default();
    let sorted = sort_servers(&mut plan, servers, &targets, now);
    let mut spare = sorted.spare;
    place_shared(
        &mut plan,
        &mut spare,
        sorted.shared_ok,
        sorted.shared_bad,
        &targets,
    );
    let leaving = recycle_over_age(&mut plan, &mut spare, &targets, now);
    size_pool(&mut plan, servers, &targets, leaving);
    settle_labels(&mut plan, servers);
    plan
}

/// Servers sorted by what they may become, oldest first.
struct Sorted<'a> {
    /// Healthy, current idle servers: the ones that may take over the shared Service.
    spare: Vec<&'a ServerView>,
    /// Healthy shared servers.
    shared_ok: Vec<&'a ServerView>,
    /// Failing shared servers.
    shared_bad: Vec<&'a ServerView>,
}

/// Decides what needs no choosing (claimed servers stay, exited, retired, outdated and
/// unhealthy ones go, starting ones keep starting) and sorts the rest.
fn sort_servers<'a>(
    plan: &mut PoolPlan,
    servers: &'a [ServerView],
    targets: &PoolTargets,
    now: Timestamp,
) -> Sorted<'a> {
    let mut oldest_first: Vec<&ServerView> = servers.iter().collect();
    oldest_first.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut sorted = Sorted {
        spare: Vec::new(),
        shared_ok: Vec::new(),
        shared_bad: Vec::new(),
    };
    for s in oldest_first {
        let current = s.spec_hash == targets.spec_hash;
        match s.planned_state() {
            _ if s.exited => plan.remove_server(s, RemoveReason::Exited),
            ServerState::Retiring => plan.remove_server(s, RemoveReason::Retired),
            ServerState::Claimed => {
                plan.states.insert(s.name.clone(), ServerState::Claimed);
            }
            ServerState::Shared if s.healthy => sorted.shared_ok.push(s),
            ServerState::Shared => sorted.shared_bad.push(s),
            // Built from an older spec or token: replaced (a server holding an old token is
            // never counted as a pool member).
            _ if !current => plan.remove_server(s, RemoveReason::Outdated),
            _ if s.auth_rejected => {
                plan.states.insert(s.name.clone(), ServerState::Unhealthy);
            }
            _ if s.healthy => sorted.spare.push(s),
            ServerState::Idle | ServerState::Unhealthy => {
                plan.remove_server(s, RemoveReason::Unhealthy)
            }
            _ if age(now, s.created) > targets.startup_deadline => {
                plan.remove_server(s, RemoveReason::StartupTimeout)
            }
            _ => {
                plan.states.insert(s.name.clone(), ServerState::Starting);
            }
        }
    }
    sorted
}

/// The shared Service: failed or outdated shared servers hand over to a spare first; then the
/// shared count is met from the spares or trimmed (failing ones first).
fn place_shared<'a>(
    plan: &mut PoolPlan,
    spare: &mut Vec<&'a ServerView>,
    shared_ok: Vec<&'a ServerView>,
    shared_bad: Vec<&'a ServerView>,
    targets: &PoolTargets,
) {
    let mut shared: Vec<&ServerView> = Vec::new();
    for (s, reason) in shared_bad
        .iter()
        .map(|s| (*s, RemoveReason::FailedOver))
        .chain(
            shared_ok
                .iter()
                .filter(|s| s.spec_hash != targets.spec_hash)
                .map(|s| (*s, RemoveReason::Outdated)),
        )
    {
        if spare.is_empty() {
            shared.push(s);
        } else {
            let successor = spare.remove(0);
            plan.remove_server(s, reason);
            shared.push(successor);
        }
    }
    shared.extend(
        shared_ok
            .iter()
            .filter(|s| s.spec_hash == targets.spec_hash),
    );
    // Healthy shared servers first, so scale-down drops the failing ones.
    shared.sort_by_key(|s| !s.healthy);
    while shared.len() < targets.shared && !spare.is_empty() {
        shared.push(spare.remove(0));
    }
    for s in shared.split_off(targets.shared.min(shared.len())) {
        plan.remove_server(s, RemoveReason::ScaledDown);
    }
    for s in &shared {
        plan.states.insert(s.name.clone(), ServerState::Shared);
    }
}

/// Idle servers past maxIdleAge do not count toward the target: replacements start first, and
/// one old server is recycled per step once the fresh ones cover the target. The spares left
/// are idle; returns how many of them are leaving (over age, not yet recycled).
fn recycle_over_age(
    plan: &mut PoolPlan,
    spare: &mut Vec<&ServerView>,
    targets: &PoolTargets,
    now: Timestamp,
) -> usize {
    let over_age = |s: &ServerView| {
        targets
            .max_idle_age
            .is_some_and(|max| age(now, s.created) > max)
    };
    // At most one over-age server is replaced at a time: if warm-up takes longer than
    // maxIdleAge, its replacement is over age too and must not start yet another one.
    if let Some(pos) = spare.iter().position(|s| over_age(s))
        && spare.len() > targets.idle
    {
        plan.remove_server(spare.remove(pos), RemoveReason::Recycled);
    }
    for s in spare.iter() {
        plan.states.insert(s.name.clone(), ServerState::Idle);
    }
    usize::from(spare.iter().any(|s| over_age(s)))
}

/// Pool size: shared + idle targets, counting servers still starting; servers to start
/// (within maxServers) or, above the targets, to drop: those still starting first (least sunk
/// cost), then the newest idle ones.
fn size_pool(plan: &mut PoolPlan, servers: &[ServerView], targets: &PoolTargets, leaving: usize) {
    let members = plan
        .states
        .values()
        .filter(|s| **s != ServerState::Claimed)
        .count()
        - leaving;
    let desired = targets.shared + targets.idle;
    if members < desired {
        let room = targets.max_servers.saturating_sub(plan.states.len());
        plan.create += (desired - members).min(room);
        plan.capped = desired - members - plan.create;
    } else if members > desired {
        let mut victims: Vec<&ServerView> = servers
            .iter()
            .filter(|s| {
                matches!(
                    plan.states.get(&s.name),
                    Some(ServerState::Starting | ServerState::Idle)
                )
            })
            .collect();
        victims.sort_by(|a, b| {
            let rank = |s: &ServerView| plan.states.get(&s.name) == Some(&ServerState::Idle);
            (rank(a), std::cmp::Reverse(a.created)).cmp(&(rank(b), std::cmp::Reverse(b.created)))
        });
        for s in victims.into_iter().take(members - desired) {
            plan.states.remove(&s.name);
            plan.remove_server(s, RemoveReason::ScaledDown);
        }
    }
}

/// Servers whose state changes are relabelled; removed ones keep no state.
fn settle_labels(plan: &mut PoolPlan, servers: &[ServerView]) {
    for s in servers {
        if let Some(state) = plan.states.get(&s.name)
            && *state != s.state
        {
            plan.relabel.insert(s.name.clone(), *state);
        }
    }
    for name in plan.remove.keys() {
        plan.states.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerState::*;

    const HASH: &str = "h1";
    fn now() -> Timestamp {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }
    fn server(name: &str, state: ServerState, healthy: bool, age_secs: i64) -> ServerView {
        ServerView {
            name: name.into(),
            state,
            role: ServerRole::Pool,
            healthy,
            auth_rejected: false,
            exited: false,
            spec_hash: HASH.into(),
            created: now() - jiff::SignedDuration::from_secs(age_secs),
            taken_for: None,
        }
    }
    fn targets(shared: usize, idle: usize) -> PoolTargets<'static> {
        PoolTargets {
            shared,
            idle,
            spec_hash: HASH,
            startup_deadline: Duration::from_secs(600),
            max_idle_age: None,
            max_servers: 100,
        }
    }

    #[test]
    fn empty_cluster_creates_shared_plus_idle() {
        let p = plan(&[], targets(1, 2), now());
        assert_eq!(p.create, 3);
        assert!(p.remove.is_empty() && p.relabel.is_empty());
    }

    #[test]
    fn first_healthy_server_becomes_shared_then_idle() {
        let servers = [
            server("a", Starting, true, 60),
            server("b", Starting, true, 50),
            server("c", Starting, false, 5),
        ];
        let p = plan(&servers, targets(1, 2), now());
        assert_eq!(
            p.relabel,
            BTreeMap::from([("a".into(), Shared), ("b".into(), Idle)])
        );
        assert_eq!(p.create, 0);
        assert_eq!(
            (p.count(Shared), p.count(Idle), p.count(Starting)),
            (1, 1, 1)
        );
    }

    #[test]
    fn steady_state_does_nothing() {
        let servers = [server("a", Shared, true, 60), server("b", Idle, true, 50)];
        let p = plan(&servers, targets(1, 1), now());
        assert_eq!(p.create, 0);
        assert!(p.relabel.is_empty() && p.remove.is_empty());
    }

    #[test]
    fn failed_shared_server_hands_over_to_an_idle_one() {
        let servers = [server("a", Shared, false, 60), server("b", Idle, true, 50)];
        let p = plan(&servers, targets(1, 1), now());
        assert_eq!(
            p.remove,
            BTreeMap::from([("a".into(), RemoveReason::FailedOver)])
        );
        assert_eq!(p.relabel, BTreeMap::from([("b".into(), Shared)]));
        assert_eq!(p.create, 1, "the pool refills");
    }

    #[test]
    fn failed_shared_server_without_spare_is_kept_until_one_is_ready() {
        let servers = [server("a", Shared, false, 60)];
        let p = plan(&servers, targets(1, 1), now());
        assert!(p.remove.is_empty());
        assert_eq!(p.create, 1);
    }

    #[test]
    fn a_server_refusing_the_token_is_kept_and_not_counted_idle() {
        let mut s = server("a", Idle, false, 60);
        s.auth_rejected = true;
        let p = plan(&[s], targets(0, 1), now());
        assert!(p.remove.is_empty());
        assert_eq!(p.relabel["a"], Unhealthy);
        assert_eq!(p.create, 0, "another server would refuse the same token");
    }

    #[test]
    fn servers_started_with_an_old_token_are_replaced_not_kept() {
        let mut s = server("a", Idle, false, 60);
        s.auth_rejected = true;
        s.spec_hash = "old-token".into();
        let p = plan(&[s], targets(0, 1), now());
        assert_eq!(p.remove["a"], RemoveReason::Outdated);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn the_server_cap_limits_creation_and_says_by_how_much() {
        let mut t = targets(0, 5);
        t.max_servers = 3;
        let claimed = [
            server("c1", Claimed, true, 60),
            server("c2", Claimed, true, 60),
        ];
        let p = plan(&claimed, t, now());
        assert_eq!(p.create, 1);
        assert_eq!(p.capped, 4);
    }

    #[test]
    fn a_warm_up_longer_than_max_idle_age_grows_the_pool_by_one_at_most() {
        let mut t = targets(0, 2);
        t.max_idle_age = Some(Duration::from_secs(60));
        // Every idle server is already over age when it becomes healthy.
        let servers = [
            server("a", Idle, true, 600),
            server("b", Idle, true, 500),
            server("c", Idle, true, 400),
        ];
        let p = plan(&servers, t, now());
        assert_eq!(p.remove.len(), 1, "one recycled at a time");
        assert!(
            p.states.len() + p.create <= 3,
            "never more than the target plus one replacement"
        );
    }

    #[test]
    fn claimed_servers_are_never_touched() {
        let mut old = server("a", Claimed, false, 99_999);
        old.spec_hash = "old".into();
        let p = plan(&[old], targets(0, 0), now());
        assert!(p.remove.is_empty() && p.relabel.is_empty());
        assert_eq!(p.create, 0);
        assert_eq!(p.count(Claimed), 1);
    }

    #[test]
    fn exited_and_timed_out_servers_are_replaced() {
        let mut dead = server("a", Idle, false, 60);
        dead.exited = true;
        let slow = server("b", Starting, false, 601);
        let p = plan(&[dead, slow], targets(0, 2), now());
        assert_eq!(p.remove["a"], RemoveReason::Exited);
        assert_eq!(p.remove["b"], RemoveReason::StartupTimeout);
        assert_eq!(p.create, 2);
    }

    #[test]
    fn outdated_idle_servers_are_recreated_and_outdated_shared_ones_roll_over() {
        let mut old_shared = server("a", Shared, true, 60);
        old_shared.spec_hash = "old".into();
        let mut old_idle = server("b", Idle, true, 60);
        old_idle.spec_hash = "old".into();
        let new_idle = server("c", Idle, true, 10);
        let p = plan(&[old_shared, old_idle, new_idle], targets(1, 1), now());
        assert_eq!(p.remove["a"], RemoveReason::Outdated);
        assert_eq!(p.remove["b"], RemoveReason::Outdated);
        assert_eq!(p.relabel["c"], Shared);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn scale_down_drops_starting_then_newest_idle() {
        let servers = [
            server("a", Idle, true, 300),
            server("b", Idle, true, 200),
            server("c", Starting, false, 10),
        ];
        let p = plan(&servers, targets(0, 1), now());
        assert_eq!(
            p.remove,
            BTreeMap::from([
                ("b".into(), RemoveReason::ScaledDown),
                ("c".into(), RemoveReason::ScaledDown)
            ])
        );
        assert_eq!(p.count(Idle), 1);
    }

    #[test]
    fn over_age_idle_server_is_recycled_only_when_the_target_holds() {
        let mut t = targets(0, 1);
        t.max_idle_age = Some(Duration::from_secs(3600));
        let old = server("a", Idle, true, 7200);
        let p = plan(std::slice::from_ref(&old), t, now());
        assert!(p.remove.is_empty(), "no replacement yet");
        assert_eq!(p.create, 1, "surge one replacement");
        let p = plan(&[old, server("b", Idle, true, 10)], t, now());
        assert_eq!(
            p.remove,
            BTreeMap::from([("a".into(), RemoveReason::Recycled)])
        );
        assert_eq!(p.create, 0);
    }

    #[test]
    fn a_server_the_cluster_took_for_the_shared_service_is_labelled_shared_though_its_label_lags() {
        let mut promoted = server("a", Idle, true, 60);
        promoted.taken_for = Some(Shared);
        let servers = [promoted, server("b", Idle, true, 50)];
        let p = plan(&servers, targets(1, 1), now());
        assert_eq!(p.relabel, BTreeMap::from([("a".into(), Shared)]));
        assert!(p.remove.is_empty());
        assert_eq!((p.count(Shared), p.count(Idle)), (1, 1));
    }

    #[test]
    fn a_server_the_cluster_took_to_remove_is_removed_and_replaced() {
        let mut leaving = server("a", Idle, true, 60);
        leaving.taken_for = Some(Retiring);
        let p = plan(&[leaving], targets(0, 1), now());
        assert_eq!(
            p.remove,
            BTreeMap::from([("a".into(), RemoveReason::Retired)])
        );
        assert_eq!(p.create, 1);
    }
}
