//! Backoff for servers that fail to start, so a broken image or spec is retried slowly and
//! reported instead of replaced in a hot loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BASE: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    until: Option<Instant>,
}

/// Start-failure backoff per cluster.
#[derive(Default)]
pub struct StartBackoff {
    clusters: Mutex<HashMap<String, Entry>>,
}

impl StartBackoff {
    /// Records a reconcile's outcome for `cluster`: `failed` servers that exited or timed out
    /// before becoming healthy, and whether any server became healthy.
    pub fn observe(&self, cluster: &str, failed: usize, became_healthy: bool, now: Instant) {
        let Ok(mut clusters) = self.clusters.lock() else {
            return;
        };
        if became_healthy {
            clusters.remove(cluster);
        } else if failed > 0 {
            let entry = clusters.entry(cluster.to_string()).or_default();
            entry.failures += failed as u32;
            let delay = BASE
                .saturating_mul(1 << (entry.failures - 1).min(10))
                .min(MAX);
            entry.until = Some(now + delay);
        }
    }

    /// How long new servers must wait, with the failures so far; `None` when they may start.
    pub fn wait(&self, cluster: &str, now: Instant) -> Option<(Duration, u32)> {
        let clusters = self.clusters.lock().ok()?;
        let entry = clusters.get(cluster)?;
        let until = entry.until?;
        (until > now).then(|| (until - now, entry.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_reset_on_health() {
        let b = StartBackoff::default();
        let t0 = Instant::now();
        assert!(b.wait("c", t0).is_none());
        b.observe("c", 1, false, t0);
        assert_eq!(b.wait("c", t0), Some((Duration::from_secs(5), 1)));
        b.observe("c", 1, false, t0);
        assert_eq!(b.wait("c", t0), Some((Duration::from_secs(10), 2)));
        assert!(
            b.wait("c", t0 + Duration::from_secs(11)).is_none(),
            "the delay passes"
        );
        for _ in 0..20 {
            b.observe("c", 1, false, t0);
        }
        assert_eq!(b.wait("c", t0).unwrap().0, MAX);
        b.observe("c", 0, true, t0);
        assert!(b.wait("c", t0).is_none());
    }
}
