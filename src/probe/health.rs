//! What the probes have learnt about each server, and the rules that turn results into a verdict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::client::{FailureKind, ProbeFailure, ProbeSuccess};

/// The verdict on one server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet answered a probe (starting).
    #[default]
    Unknown,
    /// The last probe passed.
    Healthy,
    /// `failureThreshold` consecutive probes failed after it had been healthy.
    Unhealthy,
    /// The server refused the operator's token: a configuration problem, not a dead server.
    AuthRejected,
}

/// Where a server's warm-up stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WarmupState {
    /// Not run yet (or not wanted).
    #[default]
    NotStarted,
    /// Running now.
    Running,
    /// Finished; how long it took.
    Done(Duration),
    /// The last attempt failed; it is tried again at the server's next passed probe.
    Failed(String),
}

/// Probe history of one server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerHealth {
    /// The verdict.
    pub verdict: Verdict,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The last failure, if the last probe failed.
    pub last_failure: Option<ProbeFailure>,
    /// Latency of the last passed probe.
    pub last_latency: Option<Duration>,
    /// Reported Spark version.
    pub spark_version: Option<String>,
    /// The warm-up.
    pub warmup: WarmupState,
}

impl ServerHealth {
    /// Records one result; returns whether the verdict changed.
    pub fn record(
        &mut self,
        result: &Result<ProbeSuccess, ProbeFailure>,
        failure_threshold: u32,
    ) -> bool {
        let before = self.verdict;
        match result {
            Ok(success) => {
                self.consecutive_failures = 0;
                self.last_failure = None;
                self.last_latency = Some(success.latency);
                self.verdict = Verdict::Healthy;
            }
            Err(failure) => {
                self.consecutive_failures += 1;
                self.last_failure = Some(failure.clone());
                if failure.kind == FailureKind::Unauthenticated {
                    self.verdict = Verdict::AuthRejected;
                } else if self.verdict != Verdict::Unknown
                    && self.consecutive_failures >= failure_threshold.max(1)
                {
                    self.verdict = Verdict::Unhealthy;
                }
            }
        }
        self.verdict != before
    }
}

/// Health of every probed server, by pod UID.
#[derive(Default)]
pub struct HealthBook {
    servers: Mutex<HashMap<String, ServerHealth>>,
}

impl HealthBook {
    /// The health of a server (Unknown if never probed).
    pub fn get(&self, uid: &str) -> ServerHealth {
        self.servers
            .lock()
            .map(|s| s.get(uid).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Updates a server's health; returns whether its verdict changed.
    pub fn update(&self, uid: &str, f: impl FnOnce(&mut ServerHealth) -> bool) -> bool {
        match self.servers.lock() {
            Ok(mut servers) => f(servers.entry(uid.to_string()).or_default()),
            Err(_) => false,
        }
    }

    /// Records `verdict` for a server this process has no history of (e.g. the state a
    /// previous leader left on the pod's label), so a new leader neither tears down healthy
    /// servers before its first probe nor trusts a hung one forever.
    pub fn seed(&self, uid: &str, verdict: Verdict) {
        if let Ok(mut servers) = self.servers.lock() {
            servers
                .entry(uid.to_string())
                .or_insert_with(|| ServerHealth {
                    verdict,
                    ..ServerHealth::default()
                });
        }
    }

    /// Forgets the servers for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut servers) = self.servers.lock() {
            servers.retain(|uid, _| keep(uid));
        }
    }

    /// Number of servers with a recorded health.
    pub fn recorded(&self) -> usize {
        self.servers.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<ProbeSuccess, ProbeFailure> {
        Ok(ProbeSuccess {
            latency: Duration::from_millis(5),
            server_side_session_id: "s".into(),
        })
    }
    fn fail(kind: FailureKind) -> Result<ProbeSuccess, ProbeFailure> {
        Err(ProbeFailure {
            kind,
            message: "x".into(),
        })
    }

    #[test]
    fn a_healthy_server_turns_unhealthy_after_the_threshold() {
        let mut h = ServerHealth::default();
        assert!(
            !h.record(&fail(FailureKind::Unavailable), 3),
            "failures while starting keep it Unknown"
        );
        assert!(h.record(&ok(), 3));
        assert_eq!(h.verdict, Verdict::Healthy);
        assert!(!h.record(&fail(FailureKind::DeadlineExceeded), 3));
        assert!(!h.record(&fail(FailureKind::DeadlineExceeded), 3));
        assert!(h.record(&fail(FailureKind::DeadlineExceeded), 3));
        assert_eq!(h.verdict, Verdict::Unhealthy);
        assert!(h.record(&ok(), 3), "it recovers on the next pass");
    }

    #[test]
    fn a_seeded_verdict_does_not_override_history() {
        let book = HealthBook::default();
        book.seed("a", Verdict::Healthy);
        assert_eq!(book.get("a").verdict, Verdict::Healthy);
        book.update("a", |h| h.record(&fail(FailureKind::DeadlineExceeded), 1));
        book.seed("a", Verdict::Healthy);
        assert_eq!(book.get("a").verdict, Verdict::Unhealthy);
    }

    #[test]
    fn a_refused_token_is_reported_at_once() {
        let mut h = ServerHealth::default();
        assert!(h.record(&fail(FailureKind::Unauthenticated), 3));
        assert_eq!(h.verdict, Verdict::AuthRejected);
    }
}
