//! One poll loop for everything that waits on the world: bounded in time, never a fixed sleep
//! standing in for a condition.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `check` every `every` until it holds; returns how long that took, or an error naming
/// `what` after `timeout`.
pub async fn until<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}
