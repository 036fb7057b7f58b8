//! The claim decision: which waiting claim gets which idle server (first come, first served),
//! which bound claims lost their server or expired, and which claimed servers lost their
//! claim. Pure, so the rules are unit-tested without an apiserver.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

/// Claim phases.
pub mod phase {
    /// Waiting for a server.
    pub const PENDING: &str = "Pending";
    /// Bound to a server.
    pub const BOUND: &str = "Bound";
    /// Its server died; final.
    pub const LOST: &str = "Lost";
    /// Its ttl ran out; final.
    pub const EXPIRED: &str = "Expired";
    /// Waited too long or too many waited; final.
    pub const FAILED: &str = "Failed";
}

/// What the decision needs to know about a claim.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimView {
    /// Claim name.
    pub name: String,
    /// Created at.
    pub created: Timestamp,
    /// Current phase ("" for a new claim).
    pub phase: String,
    /// The bound server, if any.
    pub server: Option<String>,
    /// When it was bound.
    pub bound_at: Option<Timestamp>,
    /// Lifetime after binding.
    pub ttl: Option<Duration>,
}

/// Limits on waiting.
#[derive(Clone, Copy, Debug)]
pub struct ClaimLimits {
    /// Most claims that may wait at once; later ones fail.
    pub max_waiting: usize,
    /// A claim waiting longer than this fails.
    pub wait_timeout: Duration,
}

/// What to do with claims and claimed servers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimPlan {
    /// Claim → idle server to bind.
    pub bind: BTreeMap<String, String>,
    /// Bound claims whose server is gone.
    pub lost: BTreeSet<String>,
    /// Bound claims past their ttl (their servers are retired).
    pub expired: BTreeSet<String>,
    /// Claims that still wait, with their place in the queue (1 = next).
    pub waiting: BTreeMap<String, usize>,
    /// Claims that fail: (reason, message).
    pub failed: BTreeMap<String, (String, String)>,
    /// Claimed servers to retire: their claim is gone, expired or final.
    pub retire: BTreeSet<String>,
}

fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

/// Decides. `claimed_servers` maps each claimed server to the claim named on it; `idle` lists
/// healthy idle servers, best first; `alive` is every live server.
pub fn plan_claims(
    claims: &[ClaimView],
    claimed_servers: &BTreeMap<String, String>,
    idle: &[String],
    alive: &BTreeSet<String>,
    limits: ClaimLimits,
    now: Timestamp,
) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    let mut by_age: Vec<&ClaimView> = claims.iter().collect();
    by_age.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let final_phase = |p: &str| matches!(p, phase::LOST | phase::EXPIRED | phase::FAILED);

    // A claimed server whose claim is gone or final is retired (never reused).
    let holding: BTreeMap<&str, &ClaimView> = claims.iter().map(|c| (c.name.as_str(), c)).collect();
    for (server, claim) in claimed_servers {
        match holding.get(claim.as_str()) {
            Some(c)
                if !final_phase(&c.phase) && c.server.as_deref().is_none_or(|s| s == server) => {}
            _ => {
                plan.retire.insert(server.clone());
            }
        }
    }

    let mut idle = idle.iter();
    let mut waiting = 0;
    for claim in by_age {
        if final_phase(&claim.phase) {
            continue;
        }
        if let Some(server) = &claim.server {
            if !alive.contains(server) || !claimed_servers.contains_key(server) {
                plan.lost.insert(claim.name.clone());
            } else if let (Some(ttl), Some(bound)) = (claim.ttl, claim.bound_at)
                && elapsed(now, bound) > ttl
            {
                plan.expired.insert(claim.name.clone());
                plan.retire.insert(server.clone());
            }
            continue;
        }
        if let Some(server) = idle.next() {
            plan.bind.insert(claim.name.clone(), server.clone());
        } else if elapsed(now, claim.created) > limits.wait_timeout {
            let message = format!(
                "no server became free within {}s",
                limits.wait_timeout.as_secs()
            );
            plan.failed
                .insert(claim.name.clone(), ("WaitTimeout".into(), message));
        } else if waiting >= limits.max_waiting {
            let message = format!(
                "{} claims already wait for this cluster (hotPool.maxWaitingClaims)",
                limits.max_waiting
            );
            plan.failed
                .insert(claim.name.clone(), ("TooManyWaitingClaims".into(), message));
        } else {
            waiting += 1;
            plan.waiting.insert(claim.name.clone(), waiting);
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
            created: now() - jiff::SignedDuration::from_secs(age_secs),
            phase: String::new(),
            server: None,
            bound_at: None,
            ttl: None,
        }
    }
    fn limits() -> ClaimLimits {
        ClaimLimits {
            max_waiting: 2,
            wait_timeout: Duration::from_secs(600),
        }
    }
    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn oldest_claims_get_the_idle_servers_first_and_the_rest_wait_in_order() {
        let claims = [claim("c", 1), claim("a", 30), claim("b", 20), claim("d", 0)];
        let alive = BTreeSet::from(["s1".to_string(), "s2".to_string()]);
        let p = plan_claims(
            &claims,
            &BTreeMap::new(),
            &names(&["s1", "s2"]),
            &alive,
            limits(),
            now(),
        );
        assert_eq!(
            p.bind,
            BTreeMap::from([("a".into(), "s1".into()), ("b".into(), "s2".into())])
        );
        assert_eq!(
            p.waiting,
            BTreeMap::from([("c".into(), 1), ("d".into(), 2)])
        );
    }

    #[test]
    fn no_server_is_given_twice() {
        let claims: Vec<ClaimView> = (0..50)
            .map(|i| claim(&format!("c{i:02}"), 100 - i))
            .collect();
        let idle = names(&["s1", "s2", "s3"]);
        let p = plan_claims(
            &claims,
            &BTreeMap::new(),
            &idle,
            &BTreeSet::new(),
            ClaimLimits {
                max_waiting: 100,
                ..limits()
            },
            now(),
        );
        let servers: BTreeSet<&String> = p.bind.values().collect();
        assert_eq!(servers.len(), p.bind.len());
        assert_eq!(p.bind.len(), 3);
        assert_eq!(p.waiting.len(), 47);
    }

    #[test]
    fn waiting_is_limited_in_count_and_time() {
        let claims = [
            claim("old", 700),
            claim("a", 3),
            claim("b", 2),
            claim("c", 1),
        ];
        let p = plan_claims(
            &claims,
            &BTreeMap::new(),
            &[],
            &BTreeSet::new(),
            limits(),
            now(),
        );
        assert_eq!(p.failed["old"].0, "WaitTimeout");
        assert_eq!(p.failed["c"].0, "TooManyWaitingClaims");
        assert_eq!(p.waiting.len(), 2);
    }

    #[test]
    fn a_claim_whose_server_died_is_lost_and_orphans_retire() {
        let mut bound = claim("a", 60);
        bound.phase = phase::BOUND.into();
        bound.server = Some("gone".into());
        let claimed = BTreeMap::from([("s9".to_string(), "deleted-claim".to_string())]);
        let alive = BTreeSet::from(["s9".to_string()]);
        let p = plan_claims(&[bound], &claimed, &[], &alive, limits(), now());
        assert_eq!(p.lost, BTreeSet::from(["a".to_string()]));
        assert_eq!(p.retire, BTreeSet::from(["s9".to_string()]));
    }

    #[test]
    fn ttl_expires_a_bound_claim_and_retires_its_server() {
        let mut bound = claim("a", 7200);
        bound.phase = phase::BOUND.into();
        bound.server = Some("s1".into());
        bound.bound_at = Some(now() - jiff::SignedDuration::from_secs(3601));
        bound.ttl = Some(Duration::from_secs(3600));
        let claimed = BTreeMap::from([("s1".to_string(), "a".to_string())]);
        let alive = BTreeSet::from(["s1".to_string()]);
        let p = plan_claims(&[bound.clone()], &claimed, &[], &alive, limits(), now());
        assert_eq!(p.expired, BTreeSet::from(["a".to_string()]));
        assert!(p.retire.contains("s1"));
        bound.ttl = Some(Duration::from_secs(7200));
        assert!(
            plan_claims(&[bound], &claimed, &[], &alive, limits(), now())
                .retire
                .is_empty()
        );
    }
}
