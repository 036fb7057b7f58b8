//! The claim lifecycle after binding: which bound claims lost their server or expired, which
//! waiting claims gave up, and which claimed servers lost their claim. Binding itself is the
//! allocator's (first come, first served). Pure, so the rules are unit-tested without an
//! apiserver.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use crate::crd::ClaimPhase;

/// What the decision needs to know about a claim.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimView {
    /// Claim name.
    pub name: String,
    /// Claim uid.
    pub uid: String,
    /// Created at.
    pub created: Timestamp,
    /// Current phase.
    pub phase: ClaimPhase,
    /// The bound server, if any.
    pub server: Option<String>,
    /// When it was bound.
    pub bound_at: Option<Timestamp>,
    /// Lifetime after binding (parsed once; an unparsable ttl is reported by the claim
    /// controller and reads as none here).
    pub ttl: Option<Duration>,
}

/// Limits on waiting.
#[derive(Clone, Copy, Debug)]
pub struct ClaimLimits {
    /// A claim waiting longer than this fails.
    pub wait_timeout: Duration,
}

/// Why a claim ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimEnd {
    /// Its server died or was removed.
    ServerLost,
    /// Its ttl ran out.
    Expired,
    /// It waited longer than `hotPool.claimTimeout`.
    WaitTimeout,
}

impl ClaimEnd {
    /// The phase the claim takes.
    pub fn phase(self) -> ClaimPhase {
        match self {
            Self::ServerLost => ClaimPhase::Lost,
            Self::Expired => ClaimPhase::Expired,
            Self::WaitTimeout => ClaimPhase::Failed,
        }
    }

    /// Condition and Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ServerLost => "ServerLost",
            Self::Expired => "Expired",
            Self::WaitTimeout => "WaitTimeout",
        }
    }
}

/// The claim a claimed server is bound to, as the server records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedBy {
    /// The claim's name.
    pub name: String,
    /// The claim's uid; empty where it is not known (a server stamped before uids were
    /// recorded, or one whose bind this process has under way): then the name alone decides.
    pub uid: String,
}

impl ClaimedBy {
    /// Whether `claim` is the claim the server records.
    fn is(&self, claim: &ClaimView) -> bool {
        self.name == claim.name && (self.uid.is_empty() || self.uid == claim.uid)
    }
}

/// What to do with claims and claimed servers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimPlan {
    /// Claims that end now, and why.
    pub end: BTreeMap<String, ClaimEnd>,
    /// Claims still waiting for a server, oldest first.
    pub waiting: Vec<String>,
    /// Claimed servers to retire: their claim is gone, expired or final.
    pub retire: BTreeSet<String>,
}

fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

/// Decides. `claimed_servers` maps each claimed server to the claim it records; `alive` is
/// every live server.
pub fn plan_claims(
    claims: &[ClaimView],
    claimed_servers: &BTreeMap<String, ClaimedBy>,
    alive: &BTreeSet<String>,
    limits: ClaimLimits,
    now: Timestamp,
) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    let mut by_age: Vec<&ClaimView> = claims.iter().collect();
    by_age.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));

    // A claimed server whose claim is gone (a namesake created since is another claim) or
    // final is retired (never reused).
    let holding: BTreeMap<&str, &ClaimView> = claims.iter().map(|c| (c.name.as_str(), c)).collect();
    for (server, claimed_by) in claimed_servers {
        match holding.get(claimed_by.name.as_str()) {
            Some(c)
                if claimed_by.is(c)
                    && !c.phase.is_final()
                    && c.server.as_deref().is_none_or(|s| s == server) => {}
            _ => {
                plan.retire.insert(server.clone());
            }
        }
    }

    for claim in by_age {
        if claim.phase.is_final() {
            continue;
        }
        if let Some(server) = &claim.server {
            if !alive.contains(server) || !claimed_servers.contains_key(server) {
                plan.end.insert(claim.name.clone(), ClaimEnd::ServerLost);
            } else if let (Some(ttl), Some(bound)) = (claim.ttl, claim.bound_at)
                && elapsed(now, bound) > ttl
            {
                plan.end.insert(claim.name.clone(), ClaimEnd::Expired);
                plan.retire.insert(server.clone());
            }
        } else if elapsed(now, claim.created) > limits.wait_timeout {
            plan.end.insert(claim.name.clone(), ClaimEnd::WaitTimeout);
        } else {
            plan.waiting.push(claim.name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }
    fn claim(name: &str, age_secs: i64) -> ClaimView {
        ClaimView {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: now() - jiff::SignedDuration::from_secs(age_secs),
            phase: ClaimPhase::Pending,
            server: None,
            bound_at: None,
            ttl: None,
        }
    }
    fn by(name: &str) -> ClaimedBy {
        ClaimedBy {
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }
    fn limits() -> ClaimLimits {
        ClaimLimits {
            wait_timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn waiting_claims_are_listed_oldest_first() {
        let claims = [claim("c", 1), claim("a", 30), claim("b", 20)];
        let p = plan_claims(&claims, &BTreeMap::new(), &BTreeSet::new(), limits(), now());
        assert_eq!(p.waiting, ["a", "b", "c"]);
        assert!(p.end.is_empty());
    }

    #[test]
    fn a_claim_waiting_past_the_timeout_fails() {
        let claims = [claim("old", 700), claim("new", 3)];
        let p = plan_claims(&claims, &BTreeMap::new(), &BTreeSet::new(), limits(), now());
        assert_eq!(p.end["old"], ClaimEnd::WaitTimeout);
        assert_eq!(p.end["old"].phase(), ClaimPhase::Failed);
        assert_eq!(p.waiting, ["new"]);
    }

    #[test]
    fn a_claim_whose_server_died_is_lost_and_orphans_retire() {
        let mut bound = claim("a", 60);
        bound.phase = ClaimPhase::Bound;
        bound.server = Some("gone".into());
        let claimed = BTreeMap::from([("s9".to_string(), by("deleted-claim"))]);
        let alive = BTreeSet::from(["s9".to_string()]);
        let p = plan_claims(&[bound], &claimed, &alive, limits(), now());
        assert_eq!(p.end["a"], ClaimEnd::ServerLost);
        assert_eq!(p.retire, BTreeSet::from(["s9".to_string()]));
    }

    #[test]
    fn ttl_expires_a_bound_claim_and_retires_its_server() {
        let mut bound = claim("a", 7200);
        bound.phase = ClaimPhase::Bound;
        bound.server = Some("s1".into());
        bound.bound_at = Some(now() - jiff::SignedDuration::from_secs(3601));
        bound.ttl = Some(Duration::from_secs(3600));
        let claimed = BTreeMap::from([("s1".to_string(), by("a"))]);
        let alive = BTreeSet::from(["s1".to_string()]);
        let p = plan_claims(&[bound.clone()], &claimed, &alive, limits(), now());
        assert_eq!(p.end["a"], ClaimEnd::Expired);
        assert!(p.retire.contains("s1"));
        bound.ttl = Some(Duration::from_secs(7200));
        assert!(
            plan_claims(&[bound], &claimed, &alive, limits(), now())
                .retire
                .is_empty()
        );
    }

    #[test]
    fn a_server_of_a_deleted_claim_retires_though_a_namesake_now_waits() {
        let namesake = claim("notebook", 1);
        let old = ClaimedBy {
            name: "notebook".into(),
            uid: "uid-of-the-deleted-one".into(),
        };
        let claimed = BTreeMap::from([("s1".to_string(), old)]);
        let alive = BTreeSet::from(["s1".to_string()]);
        let p = plan_claims(
            std::slice::from_ref(&namesake),
            &claimed,
            &alive,
            limits(),
            now(),
        );
        assert!(p.retire.contains("s1"), "{p:?}");
        assert_eq!(
            p.waiting,
            ["notebook"],
            "the new claim waits for a server of its own"
        );
        // A server whose record predates uids is judged by the name alone.
        let legacy = ClaimedBy {
            name: "notebook".into(),
            uid: String::new(),
        };
        let claimed = BTreeMap::from([("s1".to_string(), legacy)]);
        assert!(
            plan_claims(&[namesake], &claimed, &alive, limits(), now())
                .retire
                .is_empty()
        );
    }

    #[test]
    fn a_final_claim_releases_its_server() {
        let mut lost = claim("a", 60);
        lost.phase = ClaimPhase::Lost;
        lost.server = Some("s1".into());
        let claimed = BTreeMap::from([("s1".to_string(), by("a"))]);
        let alive = BTreeSet::from(["s1".to_string()]);
        let p = plan_claims(&[lost], &claimed, &alive, limits(), now());
        assert!(p.retire.contains("s1"));
        assert!(p.end.is_empty(), "a final claim is not ended twice");
    }
}
