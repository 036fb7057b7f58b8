//! Around every reconcile: a deadline, a caught panic, per-object retry delays that grow with
//! each failure, and the record of reconciles in flight that /healthz reads.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::error::Error;

/// How soon a reconcile that found the stores not yet synced looks again.
pub const UNTIL_SYNCED: Duration = Duration::from_millis(500);

/// Longest a reconcile may take before it is cancelled.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);
/// A reconcile in flight for longer than this means the loop is stuck (the deadline failed).
const STUCK_AFTER: Duration = Duration::from_secs(180);
/// First retry delay after an error; doubles per failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest retry delay.
const LAST_RETRY: Duration = Duration::from_secs(300);

/// Runs `reconcile` with the deadline, turning a panic into [`Error::Panicked`].
pub async fn guarded<F, T>(liveness: &Liveness, key: &str, reconcile: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    let token = liveness.started(key);
    let result = tokio::time::timeout(
        RECONCILE_DEADLINE,
        AssertUnwindSafe(reconcile).catch_unwind(),
    )
    .await;
    liveness.finished(token);
    match result {
        Err(_) => Err(Error::TimedOut(RECONCILE_DEADLINE)),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%key, %message, "reconcile panicked; this object backs off, others go on");
            Err(Error::Panicked(message))
        }
        Ok(Ok(result)) => result,
    }
}

/// Retry delays per object: 2 s, 4 s, 8 s ... up to 5 min, reset by a success.
#[derive(Default)]
pub struct Retries {
    failures: Mutex<HashMap<String, u32>>,
}

impl Retries {
    /// Records a failure of `key` and returns how long to wait.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        delay(*n)
    }

    /// Records a success of `key`.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

fn delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(LAST_RETRY)
}

/// Reconciles in flight.
#[derive(Default)]
pub struct Liveness {
    in_flight: Mutex<HashMap<u64, (String, Instant)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A reconcile in flight.
pub struct InFlight(u64);

impl Liveness {
    fn started(&self, key: &str) -> InFlight {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(id, (key.to_string(), Instant::now()));
        }
        InFlight(id)
    }

    fn finished(&self, token: InFlight) {
        if let Ok(mut m) = self.in_flight.lock() {
            m.remove(&token.0);
        }
    }

    /// The key of a reconcile stuck past every deadline, if any.
    pub fn stuck(&self) -> Option<String> {
        let m = self.in_flight.lock().ok()?;
        m.values()
            .find(|(_, since)| since.elapsed() > STUCK_AFTER)
            .map(|(key, _)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let r = Retries::default();
        let delays: Vec<u64> = (0..12).map(|_| r.failed("a").as_secs()).collect();
        assert_eq!(&delays[..5], [2, 4, 8, 16, 32]);
        assert_eq!(*delays.last().unwrap(), 300);
        r.succeeded("a");
        assert_eq!(r.failed("a").as_secs(), 2);
        assert_eq!(r.failed("b").as_secs(), 2, "objects back off independently");
    }

    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_not_a_crash() {
        let liveness = Liveness::default();
        let result: Result<(), Error> = guarded(&liveness, "ns/bad", async {
            let ttl: Vec<u64> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            let _ = ttl[3];
            Ok(())
        })
        .await;
        assert!(matches!(result, Err(Error::Panicked(m)) if m.contains("index out of bounds")));
        assert!(liveness.stuck().is_none());
        let fine = guarded(&liveness, "ns/good", async { Ok::<_, Error>(7) }).await;
        assert_eq!(fine.unwrap(), 7);
    }
}
