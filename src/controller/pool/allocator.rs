//! The allocator: per cluster, a queue of waiting claims in arrival order and the servers handed
//! out by this process. One picker pairs queue heads with idle servers, never handing out the
//! same server twice; the writes that make a pairing real are `controller::bind`'s. The state is
//! in memory only: what a claim is bound to lives on the pod and the claim, so a restarted or new
//! leader rebuilds everything from the stores.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

/// `namespace/name` of a cluster.
pub type ClusterKey = String;

/// What binding needs to know about a cluster, published by each cluster reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTerms {
    /// The cluster's namespace.
    pub namespace: String,
    /// The cluster's name.
    pub cluster: String,
    /// UID of the cluster (servers must be owned by it).
    pub cluster_uid: String,
    /// Hash of the spec and token current servers are built from.
    pub server_hash: String,
    /// Idle servers kept back for the shared endpoint's failover.
    pub reserved_for_shared: usize,
    /// Most claims that may wait at once.
    pub max_waiting: usize,
    /// The Connect port.
    pub port: i32,
    /// Token mode: only pool servers (each with its own token) are handed out.
    pub token_mode: bool,
}

/// An idle, healthy, current server that may be handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Pod name.
    pub name: String,
    /// Pod uid: a ledger entry holds this very pod.
    pub uid: String,
    /// Pod creation time (oldest is handed out first).
    pub created: Timestamp,
}

/// A waiting claim paired with a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The claim.
    pub claim: String,
    /// The claim's uid: a claim deleted and created again under its name is another claim.
    pub claim_uid: String,
    /// When the claim was created (its place in line).
    pub created: Timestamp,
    /// The server.
    pub server: Candidate,
    /// When this process first saw the claim.
    pub first_seen: Timestamp,
    /// The claim is under the cluster's [`Cap`].
    pub capped: bool,
}

/// Why a claim could not join the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `hotPool.maxWaitingClaims` claims wait already.
    QueueFull {
        /// The limit that was reached.
        max_waiting: usize,
    },
    /// The claim is under a cap (the gateway's `maxDedicatedServers`) that is reached.
    CapReached {
        /// The cap.
        limit: usize,
    },
}

/// A claim asking to join its cluster's line.
#[derive(Clone, Copy, Debug)]
pub struct Arrival<'a> {
    /// The claim's name.
    pub claim: &'a str,
    /// The claim's uid.
    pub uid: &'a str,
    /// When the claim was created (its place in line).
    pub created: Timestamp,
    /// Now (when this process first saw the claim, if it is new).
    pub now: Timestamp,
}

/// A cap on the claims of one kind (the gateway's, one per user) that hold, are being bound
/// to or wait for a server of a cluster at once. Decided under the allocator's lock, so claims
/// arriving together never pass it together.
#[derive(Clone, Copy, Debug)]
pub struct Cap<'a> {
    /// Most such claims at once.
    pub limit: usize,
    /// The live claims under the cap, as the stores show them, each with whether it holds a
    /// server. A claim this process has in line or is binding counts only while listed here:
    /// a claim deleted meanwhile frees its place at once.
    pub live: &'a BTreeMap<String, bool>,
}

/// A claim in line, ordered by creation time, then name: the first is served first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InLine {
    created: Timestamp,
    name: String,
    uid: String,
    /// Under the cluster's [`Cap`].
    capped: bool,
}

/// The claim a server was handed to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HandedTo {
    name: String,
    uid: String,
    capped: bool,
}

#[derive(Default)]
struct ClusterQueue {
    terms: Option<PoolTerms>,
    /// Waiting claims, the first served first.
    waiting: BTreeSet<InLine>,
    /// Claim name → its uid and when this process first saw it.
    first_seen: HashMap<String, (String, Timestamp)>,
    /// Server → claim, for servers whose bind write is under way or whose pod the store does
    /// not show stamped yet.
    handed_out: BTreeMap<String, HandedTo>,
    /// Idle servers the cluster reconcile is changing (relabelling or removing): never handed
    /// out until the store shows them changed or the change is given up.
    withheld: BTreeSet<String>,
    /// Since when new servers have been held back for a burst of binds.
    refill_held_since: Option<Instant>,
    /// When bind writes were last seen under way.
    last_bind_writes: Option<Instant>,
    /// When a server was last handed out.
    last_handed_out: Option<Instant>,
    /// When the oldest handout whose replacement may not start yet happened (the claimant's
    /// grace runs from it, so a stream of claims never keeps pushing the refill back).
    unreplaced_since: Option<Instant>,
    /// Servers handed out since then: the grace spares one claimant, never a busy pool.
    unreplaced: usize,
}

impl ClusterQueue {
    /// Live claims under the cap other than `claim` that hold a server, are being bound or
    /// wait in line, each counted once.
    fn under_cap(&self, live: &BTreeMap<String, bool>, claim: &str) -> usize {
        let waiting = self.waiting.iter().filter(|c| c.capped).map(|c| &c.name);
        let handed_out = self
            .handed_out
            .values()
            .filter(|c| c.capped)
            .map(|c| &c.name);
        let in_hand: BTreeSet<&String> = waiting.chain(handed_out).collect();
        live.iter()
            .filter(|(name, holds)| name.as_str() != claim && (**holds || in_hand.contains(name)))
            .count()
    }

    /// How many of `candidates` the picker would hand out: those not handed out or withheld,
    /// beyond the servers reserved for the shared endpoint.
    fn free(&self, candidates: &[Candidate]) -> usize {
        let reserved = self.terms.as_ref().map_or(0, |t| t.reserved_for_shared);
        candidates
            .iter()
            .filter(|c| !self.is_taken(&c.name))
            .count()
            .saturating_sub(reserved)
    }

    /// Whether `server` is handed out or withheld.
    fn is_taken(&self, server: &str) -> bool {
        self.handed_out.contains_key(server) || self.withheld.contains(server)
    }
}

/// The allocators of every cluster.
#[derive(Default)]
pub struct Allocator {
    clusters: Mutex<HashMap<ClusterKey, ClusterQueue>>,
}

impl Allocator {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut ClusterQueue) -> T) -> T {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(clusters.entry(key.to_string()).or_default())
    }

    /// Records the terms of a cluster (from its reconcile).
    pub fn publish(&self, key: &str, terms: PoolTerms) {
        self.with(key, |q| q.terms = Some(terms));
    }

    /// The cluster's current terms, once its reconcile has run.
    pub fn terms(&self, key: &str) -> Option<PoolTerms> {
        self.with(key, |q| q.terms.clone())
    }

    /// Whether new servers of the cluster wait for a burst of binds: while bind writes are
    /// under way (`binding`) or a server was handed out less than `quiet` ago, for at most `max`
    /// since the burst began. A burst ends only after `max` without handouts or bind writes, so
    /// a stream of claims is held once, at its start, and not again at each short gap between
    /// its claims (held at every gap, a stream of several claims a second would have its
    /// replacements start up to `max` late, over and over). Returns how long until the refill
    /// should be looked at again, or `None` when it may start now.
    pub fn refill_hold(
        &self,
        key: &str,
        binding: bool,
        quiet: Duration,
        max: Duration,
        now: Instant,
    ) -> Option<Duration> {
        self.with(key, |q| {
            if binding {
                q.last_bind_writes = Some(now);
            }
            let since_last = q
                .last_handed_out
                .map(|t| now.saturating_duration_since(t))
                .filter(|d| *d < quiet);
            if !binding && since_last.is_none() {
                let burst_over = q
                    .last_handed_out
                    .max(q.last_bind_writes)
                    .is_none_or(|t| now.saturating_duration_since(t) >= max);
                if burst_over {
                    q.refill_held_since = None;
                }
                return None;
            }
            let held = now.saturating_duration_since(*q.refill_held_since.get_or_insert(now));
            let left = max.checked_sub(held).filter(|d| !d.is_zero())?;
            Some(since_last.map_or(quiet, |d| quiet - d).min(left))
        })
    }

    /// Whether new servers wait to spare a claimant's first queries: while `idle_left` servers
    /// remain idle (none: no wait), no claim waits in line, the handout not yet replaced was
    /// less than `delay` ago, and it is the only one since. A second handout within the grace
    /// ends it: claims coming that fast make a busy pool, whose replacements held back would
    /// leave the next claims without an idle server. Returns how long is left of the wait;
    /// once there is none, the replacements may start and the next handout begins a new grace.
    pub fn claimant_grace(
        &self,
        key: &str,
        idle_left: usize,
        delay: Duration,
        now: Instant,
    ) -> Option<Duration> {
        self.with(key, |q| {
            let since = now.saturating_duration_since(q.unreplaced_since?);
            let left = delay.checked_sub(since).filter(|left| {
                !left.is_zero() && idle_left > 0 && q.waiting.is_empty() && q.unreplaced <= 1
            });
            if left.is_none() {
                q.unreplaced_since = None;
                q.unreplaced = 0;
            }
            left
        })
    }

    /// Puts claim `claim` (uid `uid`) in line (idempotent; a claim this process is binding
    /// already stays out: a store that does not show its bind yet must not get it a second
    /// server). A claim of the same name and another uid is a new claim: an earlier namesake
    /// in line or being bound is forgotten. Refused when the line is full: `idle` (the
    /// cluster's candidates as the store shows them) says how many in line a server awaits
    /// already, and those do not count as waiting, so how many a burst gets bound never
    /// depends on how soon the picker runs. With no `idle` given, every claim in line counts.
    pub fn enqueue(
        &self,
        key: &str,
        arrival: Arrival<'_>,
        idle: &[Candidate],
    ) -> Result<(), Refused> {
        self.join(key, arrival, idle, None)
    }

    /// Puts a claim under `cap` in line as [`Allocator::enqueue`] does; refused as well when
    /// the claims under the cap holding a server, being bound or in line reach it.
    pub fn enqueue_capped(
        &self,
        key: &str,
        arrival: Arrival<'_>,
        idle: &[Candidate],
        cap: Cap<'_>,
    ) -> Result<(), Refused> {
        self.join(key, arrival, idle, Some(cap))
    }

    fn join(
        &self,
        key: &str,
        arrival: Arrival<'_>,
        idle: &[Candidate],
        cap: Option<Cap<'_>>,
    ) -> Result<(), Refused> {
        let Arrival {
            claim,
            uid,
            created,
            now,
        } = arrival;
        self.with(key, |q| {
            let this = |name: &str, u: &str| name == claim && u == uid;
            if q.waiting.iter().any(|c| this(&c.name, &c.uid))
                || q.handed_out.values().any(|c| this(&c.name, &c.uid))
            {
                return Ok(());
            }
            let namesake = |name: &str, u: &str| name == claim && u != uid;
            q.waiting.retain(|c| !namesake(&c.name, &c.uid));
            let max_waiting = q.terms.as_ref().map_or(usize::MAX, |t| t.max_waiting);
            if q.waiting.len() >= max_waiting.saturating_add(q.free(idle)) {
                return Err(Refused::QueueFull { max_waiting });
            }
            if let Some(cap) = cap
                && q.under_cap(cap.live, claim) >= cap.limit
            {
                return Err(Refused::CapReached { limit: cap.limit });
            }
            let seen = q
                .first_seen
                .entry(claim.to_string())
                .or_insert_with(|| (uid.to_string(), now));
            if seen.0 != uid {
                *seen = (uid.to_string(), now);
            }
            q.waiting.insert(InLine {
                created,
                name: claim.to_string(),
                uid: uid.to_string(),
                capped: cap.is_some(),
            });
            Ok(())
        })
    }

    /// Whether claim `claim` with uid `uid` waits in line (rather than being bound right now).
    pub fn in_line(&self, key: &str, claim: &str, uid: &str) -> bool {
        self.with(key, |q| {
            q.waiting.iter().any(|c| c.name == claim && c.uid == uid)
        })
    }

    /// When this process first saw the claim.
    pub fn first_seen(&self, key: &str, claim: &str) -> Option<Timestamp> {
        self.with(key, |q| q.first_seen.get(claim).map(|(_, at)| *at))
    }

    /// Forgets claim `claim` with uid `uid` (bound, final or deleted); a namesake created
    /// since keeps its place.
    pub fn forget_claim(&self, key: &str, claim: &str, uid: &str) {
        self.with(key, |q| {
            q.waiting.retain(|c| !(c.name == claim && c.uid == uid));
            if q.first_seen.get(claim).is_some_and(|(seen, _)| seen == uid) {
                q.first_seen.remove(claim);
            }
        });
    }

    /// Drops waiting claims that `keep` (given name and uid) no longer lists (deleted, bound
    /// or ended elsewhere).
    pub fn retain_waiting(&self, key: &str, keep: impl Fn(&str, &str) -> bool) {
        self.with(key, |q| {
            q.waiting.retain(|c| keep(&c.name, &c.uid));
            // A claim being bound is out of line but still waiting: its first sighting stays.
            q.first_seen.retain(|name, (uid, _)| keep(name, uid));
        });
    }

    /// Forgets a deleted cluster.
    pub fn forget_cluster(&self, key: &str) {
        if let Ok(mut clusters) = self.clusters.lock() {
            clusters.remove(key);
        }
    }

    /// Servers handed out by this process whose claim is not yet visible on the pod, with the
    /// claim's name. `still_idle` says which of them the store still shows idle: the others
    /// have their bind recorded (or are gone) and are forgotten, as [`Allocator::assign`] does,
    /// so a server retired between bursts is not taken for a bind still under way.
    pub fn handed_out(
        &self,
        key: &str,
        still_idle: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, String> {
        self.with(key, |q| {
            q.handed_out.retain(|server, _| still_idle(server));
            q.handed_out
                .iter()
                .map(|(server, claim)| (server.clone(), claim.name.clone()))
                .collect()
        })
    }

    /// Pairs waiting claims with `candidates` (idle, healthy, current servers as the store
    /// shows them). `still_idle` says which handed-out servers the store still shows idle: the
    /// others have their bind recorded (or are gone) and are forgotten. `now` is when the
    /// servers are handed out (the refill's holds run from it).
    pub fn assign(
        &self,
        key: &str,
        candidates: &[Candidate],
        still_idle: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<Assignment> {
        self.with(key, |q| {
            q.handed_out.retain(|server, _| still_idle(server));
            q.withheld.retain(|server| still_idle(server));
            let reserved = q.terms.as_ref().map_or(0, |t| t.reserved_for_shared);
            let pairs = pick(
                &q.waiting,
                candidates,
                |server| q.is_taken(server),
                reserved,
            );
            if !pairs.is_empty() {
                q.last_handed_out = Some(now);
                q.unreplaced_since.get_or_insert(now);
                q.unreplaced += pairs.len();
            }
            pairs
                .into_iter()
                .map(|(claim, server)| {
                    q.waiting.remove(&claim);
                    q.handed_out.insert(
                        server.name.clone(),
                        HandedTo {
                            name: claim.name.clone(),
                            uid: claim.uid.clone(),
                            capped: claim.capped,
                        },
                    );
                    let first_seen = q
                        .first_seen
                        .get(&claim.name)
                        .filter(|(uid, _)| *uid == claim.uid)
                        .map_or(claim.created, |(_, at)| *at);
                    Assignment {
                        claim: claim.name,
                        claim_uid: claim.uid,
                        created: claim.created,
                        server,
                        first_seen,
                        capped: claim.capped,
                    }
                })
                .collect()
        })
    }

    /// Keeps `server` from being handed out while the cluster reconcile changes it; `false`
    /// (and nothing kept) when it is handed out already: then it is a claim's and must be left
    /// alone.
    pub fn withhold(&self, key: &str, server: &str) -> bool {
        self.with(key, |q| {
            if q.handed_out.contains_key(server) {
                return false;
            }
            q.withheld.insert(server.to_string());
            true
        })
    }

    /// Gives up a change of `server` that did not happen: it may be handed out again.
    pub fn release(&self, key: &str, server: &str) {
        self.with(key, |q| q.withheld.remove(server));
    }

    /// Undoes an assignment whose write did not happen: the server is free again and, when
    /// `requeue` holds, the claim takes its old place (the head of the line).
    pub fn undo(&self, key: &str, assignment: &Assignment, requeue: bool) {
        self.with(key, |q| {
            q.handed_out.remove(&assignment.server.name);
            if requeue {
                q.waiting.insert(InLine {
                    created: assignment.created,
                    name: assignment.claim.clone(),
                    uid: assignment.claim_uid.clone(),
                    capped: assignment.capped,
                });
            }
        });
    }

    /// Number of claims waiting in this process's queue.
    pub fn waiting(&self, key: &str) -> usize {
        self.with(key, |q| q.waiting.len())
    }
}

/// The picker: the oldest waiting claims get the oldest free servers, after `reserved` servers
/// are kept back for the shared endpoint. Pure.
fn pick(
    waiting: &BTreeSet<InLine>,
    candidates: &[Candidate],
    taken: impl Fn(&str) -> bool,
    reserved: usize,
) -> Vec<(InLine, Candidate)> {
    let mut free: Vec<&Candidate> = candidates.iter().filter(|c| !taken(&c.name)).collect();
    free.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    waiting
        .iter()
        .cloned()
        .zip(free.into_iter().skip(reserved).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::arrival;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }
    fn server(name: &str, age: i64) -> Candidate {
        crate::test_support::candidate(name, at(-age))
    }
    fn terms(reserved: usize, max_waiting: usize) -> PoolTerms {
        PoolTerms {
            namespace: "ns".into(),
            cluster: "c".into(),
            cluster_uid: "uid".into(),
            server_hash: "h".into(),
            reserved_for_shared: reserved,
            max_waiting,
            port: 15002,
            token_mode: false,
        }
    }

    #[test]
    fn oldest_claims_get_the_oldest_servers_and_the_rest_wait() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        for (name, created) in [("late", 3), ("first", 1), ("second", 2)] {
            a.enqueue(
                "ns/c",
                arrival(name, &format!("uid-{name}"), at(created), at(10)),
                &[],
            )
            .unwrap();
        }
        let got = a.assign(
            "ns/c",
            &[server("young", 1), server("old", 50)],
            |_| true,
            Instant::now(),
        );
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|x| (x.claim.as_str(), x.server.name.as_str()))
            .collect();
        assert_eq!(pairs, [("first", "old"), ("second", "young")]);
        assert_eq!(a.waiting("ns/c"), 1);
    }

    #[test]
    fn no_server_is_handed_out_twice_while_the_store_still_shows_it_idle() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        a.enqueue("ns/c", arrival("two", "uid-two", at(2), at(2)), &[])
            .unwrap();
        let pool = [server("s1", 5)];
        assert_eq!(a.assign("ns/c", &pool, |_| true, Instant::now()).len(), 1);
        assert!(
            a.assign("ns/c", &pool, |_| true, Instant::now()).is_empty(),
            "the store is stale: s1 still looks idle"
        );
        // Once the store shows s1 claimed, it is no longer a candidate at all.
        assert!(a.assign("ns/c", &[], |_| false, Instant::now()).is_empty());
        assert!(a.handed_out("ns/c", |_| true).is_empty());
    }

    #[test]
    fn a_claim_being_bound_is_not_put_in_line_again_for_a_second_server() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        let pool = [server("s1", 5), server("s2", 4)];
        let got = a.assign("ns/c", &pool, |_| true, Instant::now());
        assert_eq!(got.len(), 1);
        // The claim's own reconcile runs before its bind shows in the store.
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(2)), &[])
            .unwrap();
        assert_eq!(a.waiting("ns/c"), 0);
        assert!(
            a.assign("ns/c", &pool, |_| true, Instant::now()).is_empty(),
            "no second server"
        );
        // A bind that did not happen puts the claim back: then it is in line again.
        a.undo("ns/c", &got[0], true);
        assert_eq!(a.waiting("ns/c"), 1);
    }

    #[test]
    fn a_claim_created_again_under_the_name_of_one_just_bound_is_served() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("notebook", "uid-1", at(1), at(1)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .len(),
            1
        );
        // Bound; the claim is deleted and applied again before anything else is served, so
        // s1 (gone by now) is still recorded as handed to the name.
        a.enqueue("ns/c", arrival("notebook", "uid-2", at(30), at(30)), &[])
            .unwrap();
        assert_eq!(a.waiting("ns/c"), 1, "the new claim is in line");
        let got = a.assign("ns/c", &[server("s2", 1)], |_| true, Instant::now());
        assert_eq!(
            (got[0].claim_uid.as_str(), got[0].server.name.as_str()),
            ("uid-2", "s2")
        );
        assert_eq!(got[0].first_seen, at(30), "its wait is its own");
    }

    #[test]
    fn a_namesake_still_in_line_gives_way_to_the_claim_created_again() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("notebook", "uid-1", at(1), at(1)), &[])
            .unwrap();
        a.enqueue("ns/c", arrival("notebook", "uid-2", at(5), at(5)), &[])
            .unwrap();
        assert_eq!(a.waiting("ns/c"), 1, "one claim of that name waits");
        a.forget_claim("ns/c", "notebook", "uid-1");
        assert_eq!(
            a.waiting("ns/c"),
            1,
            "forgetting the deleted claim leaves the new one in line"
        );
        let got = a.assign(
            "ns/c",
            &[server("s1", 5), server("s2", 1)],
            |_| true,
            Instant::now(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].claim_uid.as_str(), got[0].first_seen),
            ("uid-2", at(5))
        );
    }

    #[test]
    fn a_server_the_cluster_is_changing_is_not_handed_out_and_a_handed_out_one_is_not_changed() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        assert!(
            a.withhold("ns/c", "s1"),
            "s1 is free: the cluster may change it"
        );
        assert!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .is_empty(),
            "s1 is being scaled down"
        );
        a.release("ns/c", "s1");
        let got = a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now());
        assert_eq!(got[0].server.name, "s1", "the change was given up");
        assert!(!a.withhold("ns/c", "s1"), "s1 is a claim's now");
        // A withheld server the store no longer shows idle (it was changed) is forgotten.
        assert!(a.withhold("ns/c", "s2"));
        a.assign("ns/c", &[], |s| s != "s2", Instant::now());
        a.enqueue("ns/c", arrival("two", "uid-two", at(2), at(2)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s2", 1)], |_| true, Instant::now())
                .len(),
            1
        );
    }

    #[test]
    fn a_conflict_puts_the_claim_back_at_the_head_of_the_line() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        // Created at 1, first seen by this process at 3.
        a.enqueue("ns/c", arrival("first", "uid-first", at(1), at(3)), &[])
            .unwrap();
        let got = a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now());
        a.enqueue("ns/c", arrival("later", "uid-later", at(9), at(9)), &[])
            .unwrap();
        // A cluster reconcile while the bind is under way keeps the claim's first sighting.
        a.retain_waiting("ns/c", |_, _| true);
        a.undo("ns/c", &got[0], true);
        let again = a.assign("ns/c", &[server("s2", 1)], |_| true, Instant::now());
        assert_eq!(again[0].claim, "first");
        assert_eq!(
            again[0].first_seen,
            at(3),
            "its wait counts from the first sighting"
        );
    }

    #[test]
    fn servers_reserved_for_the_shared_endpoint_are_not_handed_out() {
        let a = Allocator::default();
        a.publish("ns/c", terms(1, 10));
        a.enqueue("ns/c", arrival("x", "uid-x", at(1), at(1)), &[])
            .unwrap();
        assert!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .is_empty()
        );
        let got = a.assign(
            "ns/c",
            &[server("s1", 5), server("s2", 1)],
            |_| true,
            Instant::now(),
        );
        assert_eq!(got[0].server.name, "s2");
    }

    #[test]
    fn refills_wait_while_binds_are_under_way_or_just_made_but_never_past_the_limit() {
        let a = Allocator::default();
        let (quiet, max) = (Duration::from_millis(250), Duration::from_secs(2));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(
            a.refill_hold("ns/c", false, quiet, max, t0),
            None,
            "nothing to wait for"
        );
        assert_eq!(a.refill_hold("ns/c", true, quiet, max, t0), Some(quiet));
        assert_eq!(
            a.refill_hold("ns/c", true, quiet, max, ms(1_900)),
            Some(Duration::from_millis(100)),
            "the hold ends at the limit"
        );
        assert_eq!(a.refill_hold("ns/c", true, quiet, max, ms(2_000)), None);
        assert_eq!(
            a.refill_hold("ns/c", true, quiet, max, ms(3_000)),
            None,
            "a stream of binds does not start a new hold"
        );
        assert_eq!(a.refill_hold("ns/c", false, quiet, max, ms(3_000)), None);
        assert_eq!(
            a.refill_hold("ns/c", true, quiet, max, ms(3_100)),
            None,
            "nor does a short gap in it"
        );
        assert_eq!(a.refill_hold("ns/c", false, quiet, max, ms(5_100)), None);
        assert_eq!(
            a.refill_hold("ns/c", true, quiet, max, ms(5_200)),
            Some(quiet),
            "a burst after a quiet spell as long as the limit does"
        );
    }

    /// An allocator that has just handed servers s1 and s2 to claims "one" and "two" in one
    /// pass.
    fn two_handed_out() -> Allocator {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        a.enqueue("ns/c", arrival("two", "uid-two", at(2), at(2)), &[])
            .unwrap();
        let got = a.assign(
            "ns/c",
            &[server("s1", 5), server("s2", 4)],
            |_| true,
            Instant::now(),
        );
        assert_eq!(got.len(), 2);
        a
    }

    #[test]
    fn a_handed_out_server_no_longer_idle_is_no_longer_being_bound() {
        let a = two_handed_out();
        // s1's bind is recorded (or its claim ended and the server was retired); s2's is not.
        let being_bound = a.handed_out("ns/c", |server| server == "s2");
        assert_eq!(being_bound.keys().collect::<Vec<_>>(), ["s2"]);
        assert_eq!(a.handed_out("ns/c", |_| true).len(), 1, "s1 is forgotten");
    }

    #[test]
    fn a_stream_of_claims_holds_its_refill_once_not_at_every_gap() {
        // Claims every 300 ms: each handout leaves a gap longer than `quiet` before the next.
        let a = Allocator::default();
        let (quiet, max) = (Duration::from_millis(250), Duration::from_secs(2));
        a.publish("ns/c", terms(0, 100));
        let t0 = Instant::now();
        let mut held = Duration::ZERO;
        for i in 0..40u64 {
            let at = t0 + Duration::from_millis(300 * i);
            let claim = format!("c{i}");
            a.enqueue(
                "ns/c",
                arrival(&claim, &claim, Timestamp::now(), Timestamp::now()),
                &[],
            )
            .unwrap();
            let got = a.assign("ns/c", &[server(&format!("s{i}"), 5)], |_| true, at);
            assert_eq!(got.len(), 1);
            // The refill is looked at once the bind is done, and again when the hold says.
            let mut look = at;
            while let Some(wait) = a.refill_hold("ns/c", false, quiet, max, look) {
                held += wait;
                look += wait;
            }
        }
        assert!(
            held <= max,
            "the stream's refills were held {held:?} in all"
        );
    }

    #[test]
    fn a_server_just_handed_out_holds_the_refill_until_binds_are_quiet() {
        let a = Allocator::default();
        let (quiet, max) = (Duration::from_millis(250), Duration::from_secs(2));
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .len(),
            1
        );
        let now = Instant::now();
        let wait = a.refill_hold("ns/c", false, quiet, max, now);
        assert!(wait.is_some_and(|w| w <= quiet), "{wait:?}");
        assert_eq!(a.refill_hold("ns/c", false, quiet, max, now + quiet), None);
    }

    #[test]
    fn a_replacement_waits_out_the_grace_only_while_an_idle_server_is_left() {
        let a = Allocator::default();
        let delay = Duration::from_secs(2);
        a.publish("ns/c", terms(0, 10));
        let now = Instant::now();
        assert_eq!(
            a.claimant_grace("ns/c", 1, delay, now),
            None,
            "nothing handed out yet"
        );
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .len(),
            1
        );
        let now = Instant::now();
        let wait = a.claimant_grace("ns/c", 1, delay, now);
        assert!(
            wait.is_some_and(|w| w <= delay && w > Duration::ZERO),
            "{wait:?}"
        );
        assert_eq!(
            a.claimant_grace("ns/c", 0, delay, now),
            None,
            "no idle server left: the replacement starts at once"
        );
        assert_eq!(
            a.claimant_grace("ns/c", 1, delay, now + delay),
            None,
            "grace over"
        );
        a.enqueue("ns/c", arrival("two", "uid-two", at(2), at(2)), &[])
            .unwrap();
        assert_eq!(
            a.claimant_grace("ns/c", 1, delay, now),
            None,
            "a claim in line never waits for a grace"
        );
        assert_eq!(
            a.claimant_grace("ns/c", 1, Duration::ZERO, now),
            None,
            "0s: off"
        );
    }

    #[test]
    fn a_second_claim_within_the_grace_starts_the_replacements_at_once() {
        let a = Allocator::default();
        let delay = Duration::from_secs(2);
        a.publish("ns/c", terms(0, 10));
        a.enqueue("ns/c", arrival("one", "uid-one", at(1), at(1)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s1", 5)], |_| true, Instant::now())
                .len(),
            1
        );
        let first = Instant::now();
        assert!(a.claimant_grace("ns/c", 4, delay, first).is_some());
        // The next claim comes within the grace of the first: the pool is busy.
        a.enqueue("ns/c", arrival("two", "uid-two", at(2), at(2)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s2", 4)], |_| true, Instant::now())
                .len(),
            1
        );
        assert_eq!(
            a.claimant_grace("ns/c", 3, delay, first),
            None,
            "two handouts in one grace: the replacements start"
        );
        // Over: the next lone handout begins a new grace.
        a.enqueue("ns/c", arrival("three", "uid-three", at(3), at(3)), &[])
            .unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s3", 3)], |_| true, Instant::now())
                .len(),
            1
        );
        assert!(a.claimant_grace("ns/c", 2, delay, Instant::now()).is_some());
    }

    #[test]
    fn a_burst_handed_out_at_once_gets_no_grace() {
        let a = two_handed_out();
        assert_eq!(
            a.claimant_grace("ns/c", 3, Duration::from_secs(2), Instant::now()),
            None
        );
    }

    #[test]
    fn the_line_is_bounded() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 2));
        a.enqueue("ns/c", arrival("a", "uid-a", at(1), at(1)), &[])
            .unwrap();
        a.enqueue("ns/c", arrival("b", "uid-b", at(2), at(2)), &[])
            .unwrap();
        a.enqueue("ns/c", arrival("b", "uid-b", at(2), at(2)), &[])
            .unwrap();
        assert_eq!(
            a.enqueue("ns/c", arrival("c", "uid-c", at(3), at(3)), &[]),
            Err(Refused::QueueFull { max_waiting: 2 })
        );
    }

    #[test]
    fn claims_an_idle_server_awaits_are_not_counted_as_waiting() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 2));
        let idle = [server("s1", 3), server("s2", 2), server("s3", 1)];
        // The picker has not run yet: three of the five in line have a server already.
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let t = at(i64::try_from(i).unwrap());
            a.enqueue("ns/c", arrival(name, name, t, t), &idle).unwrap();
        }
        assert_eq!(
            a.enqueue("ns/c", arrival("f", "f", at(9), at(9)), &idle),
            Err(Refused::QueueFull { max_waiting: 2 })
        );
        // Once the picker ran, the same two wait: one more is still refused.
        assert_eq!(a.assign("ns/c", &idle, |_| true, Instant::now()).len(), 3);
        assert_eq!(
            a.enqueue("ns/c", arrival("f", "f", at(9), at(9)), &idle),
            Err(Refused::QueueFull { max_waiting: 2 })
        );
    }

    #[test]
    fn servers_kept_for_the_shared_endpoint_do_not_make_room_in_line() {
        let a = Allocator::default();
        a.publish("ns/c", terms(1, 1));
        let idle = [server("s1", 2), server("s2", 1)];
        a.enqueue("ns/c", arrival("a", "a", at(1), at(1)), &idle)
            .unwrap();
        a.enqueue("ns/c", arrival("b", "b", at(2), at(2)), &idle)
            .unwrap();
        assert_eq!(
            a.enqueue("ns/c", arrival("c", "c", at(3), at(3)), &idle),
            Err(Refused::QueueFull { max_waiting: 1 })
        );
    }

    /// Enqueues `name` under a cap of `limit`, the stores showing `holding` (and every other
    /// claim of these tests) live.
    fn capped(
        a: &Allocator,
        name: &str,
        created: i64,
        limit: usize,
        holding: &[&str],
    ) -> Result<(), Refused> {
        let others = [
            "being-bound",
            "waiting",
            "one-too-many",
            "first",
            "second",
            "any",
        ];
        let mut live: BTreeMap<String, bool> =
            others.iter().map(|c| (c.to_string(), false)).collect();
        live.extend(holding.iter().map(|h| (h.to_string(), true)));
        let cap = Cap { limit, live: &live };
        a.enqueue_capped(
            "ns/c",
            arrival(name, &format!("uid-{name}"), at(created), at(created)),
            &[],
            cap,
        )
    }

    #[test]
    fn claims_under_a_cap_count_those_holding_being_bound_and_waiting_once_each() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 100));
        // Claims of other kinds never count against the cap.
        a.enqueue("ns/c", arrival("kubectl", "uid-kubectl", at(5), at(5)), &[])
            .unwrap();
        capped(&a, "being-bound", 2, 3, &[]).unwrap();
        let handed = a.assign("ns/c", &[server("s1", 9)], |_| true, Instant::now());
        assert_eq!(handed[0].claim, "being-bound");
        // The store already shows the one being bound as holding its server: counted once.
        assert_eq!(
            capped(&a, "waiting", 3, 2, &["holding", "being-bound"]),
            Err(Refused::CapReached { limit: 2 })
        );
        capped(&a, "waiting", 3, 3, &["holding", "being-bound"]).unwrap();
        assert_eq!(
            capped(&a, "one-too-many", 4, 3, &["holding", "being-bound"]),
            Err(Refused::CapReached { limit: 3 })
        );
        // A claim already counted joins again without being refused.
        capped(&a, "waiting", 3, 3, &["holding", "being-bound"]).unwrap();
        assert_eq!(a.waiting("ns/c"), 2, "kubectl and waiting");
    }

    #[test]
    fn a_claim_put_back_in_line_after_a_conflict_stays_under_the_cap() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 100));
        capped(&a, "first", 1, 1, &[]).unwrap();
        let handed = a.assign("ns/c", &[server("s1", 9)], |_| true, Instant::now());
        assert!(handed[0].capped);
        a.undo("ns/c", &handed[0], true);
        assert_eq!(
            capped(&a, "second", 2, 1, &[]),
            Err(Refused::CapReached { limit: 1 }),
            "the first claim, back in line, still fills the cap"
        );
        let again = a.assign("ns/c", &[server("s2", 9)], |_| true, Instant::now());
        assert_eq!(again[0].claim, "first");
        assert!(again[0].capped);
    }

    #[test]
    fn a_cap_of_zero_refuses_every_claim_under_it() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 100));
        assert_eq!(
            capped(&a, "any", 1, 0, &[]),
            Err(Refused::CapReached { limit: 0 })
        );
        assert_eq!(a.waiting("ns/c"), 0);
    }

    #[test]
    fn a_claim_deleted_while_being_bound_frees_its_place_under_the_cap_at_once() {
        let a = Allocator::default();
        a.publish("ns/c", terms(0, 100));
        capped(&a, "first", 1, 1, &[]).unwrap();
        assert_eq!(
            a.assign("ns/c", &[server("s1", 9)], |_| true, Instant::now())
                .len(),
            1
        );
        // "first" is still handed out here (its pod not yet seen stamped), but the stores no
        // longer list it: deleted.
        let live = BTreeMap::from([("second".to_string(), false)]);
        let cap = Cap {
            limit: 1,
            live: &live,
        };
        assert_eq!(
            a.enqueue_capped(
                "ns/c",
                arrival("second", "uid-second", at(2), at(2)),
                &[],
                cap
            ),
            Ok(())
        );
    }
}
