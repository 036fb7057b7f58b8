//! Turns at asking the apiserver on a caller's behalf (TokenReviews, SubjectAccessReviews): a
//! bounded number in flight, so callers cannot make the gateway a load on the apiserver, and a
//! bounded wait for a turn, after which the caller is told to try again.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Reviews of one kind in flight at once, across the replica's callers.
pub const REVIEWS_IN_FLIGHT: usize = 32;
/// Longest a caller waits for a turn.
pub const TURN_WAIT: Duration = Duration::from_secs(5);

/// Turns at one kind of review.
pub struct Turns {
    permits: Semaphore,
    what: &'static str,
}

impl Turns {
    /// [`REVIEWS_IN_FLIGHT`] turns at reviews named `what` (plural, for messages).
    pub fn new(what: &'static str) -> Self {
        Self {
            permits: Semaphore::new(REVIEWS_IN_FLIGHT),
            what,
        }
    }

    /// A turn, held until dropped; or, after [`TURN_WAIT`] without one, why not.
    pub async fn take(&self) -> Result<SemaphorePermit<'_>, String> {
        match tokio::time::timeout(TURN_WAIT, self.permits.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(_)) => Err("the gateway is stopping".into()),
            Err(_) => Err(format!(
                "{REVIEWS_IN_FLIGHT} {} are under way; try again",
                self.what
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_caller_waits_for_a_turn_and_past_the_wait_is_told_to_try_again() {
        let turns = Turns::new("token reviews");
        let held: Vec<_> = futures::future::join_all((0..REVIEWS_IN_FLIGHT).map(|_| turns.take()))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every turn up to the bound");
        let started = tokio::time::Instant::now();
        let refused = turns.take().await.expect_err("no turn left");
        assert_eq!(refused, "32 token reviews are under way; try again");
        assert_eq!(started.elapsed(), TURN_WAIT);
        drop(held);
        assert!(turns.take().await.is_ok(), "turns come back when released");
    }
}
