//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager acquires and renews
//! it) and the write fence that goes with it: writes are allowed only until the Lease, as last
//! seen renewed, could expire (less a margin). A leader that is paused, partitioned or whose
//! renewals fail stops writing before another replica can take over, and then exits.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Fence;

/// Name of the Lease.
pub const LEASE_NAME: &str = "spark-connect-operator";
/// Writes stop this long before the Lease could expire (clock skew, requests in flight).
const MARGIN: Duration = Duration::from_secs(2);
/// How often the holder re-reads the Lease to move its fence.
const POLL: Duration = Duration::from_secs(1);

/// Held leadership; dropping it without [`Leadership::step_down`] still releases the Lease.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    task:
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
    keeper: JoinHandle<()>,
}

/// Waits until this process holds the Lease; `None` when `shutdown` came first. While held,
/// `fence` is kept open; when the Lease is lost or cannot be confirmed, the fence closes and
/// `shutdown` is cancelled.
pub async fn acquire(
    client: Client,
    namespace: &str,
    duration_secs: u64,
    fence: Fence,
    shutdown: CancellationToken,
) -> Result<Option<Leadership>, kube_lease_manager::LeaseManagerError> {
    // One identity per process: a restarted leader must wait for its old Lease like anyone.
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "operator".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let identity = format!("{pod}_{}", suffix.get(..8).unwrap_or(&suffix));
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(duration_secs)
        .with_grace((duration_secs / 3).max(1))
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(%identity, "waiting to become the leader");
    let elected = tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = leader.wait_for(|is_leader| *is_leader) => changed.is_ok(),
    };
    if !elected {
        drop(leader);
        let _ = task.await;
        return Ok(None);
    }
    tracing::info!(%identity, "leading");
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    // Open the fence before the controllers start, so their first writes are not refused.
    if let Ok(Some(lease)) = leases.get_opt(LEASE_NAME).await
        && let Some(spec) = lease.spec
        && spec.holder_identity.as_deref() == Some(identity.as_str())
        && let Some(renewed) = spec.renew_time
    {
        fence.hold_until(renewed.0 + Duration::from_secs(duration_secs).saturating_sub(MARGIN));
    }
    let keeper = tokio::spawn(keep_fence(
        leases,
        identity,
        Duration::from_secs(duration_secs),
        fence,
        leader.clone(),
        shutdown,
    ));
    Ok(Some(Leadership {
        leader,
        task,
        keeper,
    }))
}

/// Moves the fence with every renewal seen; closes it and stops the process when the Lease is
/// someone else's, or when the last renewal seen is too old.
async fn keep_fence(
    leases: Api<Lease>,
    identity: String,
    duration: Duration,
    fence: Fence,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        match leases.get_opt(LEASE_NAME).await {
            Ok(Some(lease)) => {
                let spec = lease.spec.unwrap_or_default();
                let ours = spec.holder_identity.as_deref() == Some(identity.as_str());
                if !ours {
                    fence.close();
                    tracing::error!("the leader Lease is held by another replica; stopping");
                    shutdown.cancel();
                    return;
                }
                if let Some(renewed) = spec.renew_time {
                    fence.hold_until(renewed.0 + duration.saturating_sub(MARGIN));
                }
            }
            Ok(None) => {
                fence.close();
                tracing::error!("the leader Lease is gone; stopping");
                shutdown.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "reading the leader Lease failed"),
        }
        if !fence.allows_writes() {
            tracing::error!(
                "the leader Lease could not be confirmed in time; stopping so that only one operator acts"
            );
            shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = leader.wait_for(|is_leader| !*is_leader) => {
                fence.close();
                tracing::error!("lost the leader Lease; stopping so that only one operator acts");
                shutdown.cancel();
                return;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

impl Leadership {
    /// Releases the Lease at once, so a standby need not wait for it to expire.
    pub async fn step_down(self) {
        self.keeper.abort();
        let _ = self.keeper.await;
        // Dropping every receiver makes the lease task release the Lease.
        drop(self.leader);
        let _ = self.task.await;
        tracing::info!("released the leader Lease");
    }
}
