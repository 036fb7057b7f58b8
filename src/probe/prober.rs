//! The prober: probes every server the operator owns on its own schedule, spread over the
//! period, with bounded concurrency, independent of the reconcile loop. A verdict change
//! triggers a reconcile of the server's cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::client::ConnectProbe;
use super::health::HealthBook;
use crate::crd::SparkConnectCluster;
use crate::metrics::Metrics;

/// A server to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Pod UID (the key of its health).
    pub uid: String,
    /// `ip:port` of its Connect endpoint.
    pub address: String,
}

/// Probe settings of a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSettings {
    /// Client token, when the cluster uses token auth.
    pub token: Option<String>,
    /// Time between probes of one server.
    pub period: Duration,
    /// Deadline of one probe.
    pub timeout: Duration,
    /// Consecutive failures that make a server Unhealthy.
    pub failure_threshold: u32,
}

struct Target {
    cluster: ObjectRef<SparkConnectCluster>,
    address: String,
    settings: ProbeSettings,
    probe: ConnectProbe,
    next_due: Instant,
    in_flight: bool,
}

struct Inner {
    targets: Mutex<HashMap<String, Target>>,
    book: Arc<HealthBook>,
    metrics: Metrics,
    trigger: UnboundedSender<ObjectRef<SparkConnectCluster>>,
    permits: Arc<Semaphore>,
    changed: Notify,
}

/// Handle on the prober; cheap to clone.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

/// A stable offset in `[0, period)` for a server, so probes spread over the period.
fn phase(uid: &str, period: Duration) -> Duration {
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let millis = period.as_millis().max(1) as u64;
    Duration::from_millis(hash % millis)
}

impl Prober {
    /// A prober recording into `book`, running at most `max_in_flight` probes at once.
    pub fn new(
        book: Arc<HealthBook>,
        metrics: Metrics,
        trigger: UnboundedSender<ObjectRef<SparkConnectCluster>>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets: Mutex::default(),
                book,
                metrics,
                trigger,
                permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
                changed: Notify::new(),
            }),
        }
    }

    /// The health book the prober writes.
    pub fn book(&self) -> &HealthBook {
        &self.inner.book
    }

    /// Makes `servers` the probed servers of `cluster` (others of that cluster are dropped).
    pub fn sync(
        &self,
        cluster: &ObjectRef<SparkConnectCluster>,
        servers: &[ProbeTarget],
        settings: &ProbeSettings,
    ) {
        let Ok(mut targets) = self.inner.targets.lock() else {
            return;
        };
        targets.retain(|uid, t| &t.cluster != cluster || servers.iter().any(|s| &s.uid == uid));
        let now = Instant::now();
        for server in servers {
            let current = targets
                .get(&server.uid)
                .is_some_and(|t| t.address == server.address && &t.settings == settings);
            if current {
                continue;
            }
            let session = super::client::session_id(&server.uid);
            match ConnectProbe::new(
                &server.address,
                settings.token.clone(),
                session,
                settings.timeout,
            ) {
                Ok(probe) => {
                    targets.insert(
                        server.uid.clone(),
                        Target {
                            cluster: cluster.clone(),
                            address: server.address.clone(),
                            settings: settings.clone(),
                            probe,
                            next_due: now + phase(&server.uid, settings.period),
                            in_flight: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(address = %server.address, error = %e.message, "cannot probe server")
                }
            }
        }
        drop(targets);
        let alive: std::collections::HashSet<String> = self
            .inner
            .targets
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        self.inner.book.retain(|uid| alive.contains(uid));
        self.inner.changed.notify_one();
    }

    /// Releases the probe session of a server that is being retired (best effort).
    pub async fn release(&self, uid: &str) {
        let probe = self
            .inner
            .targets
            .lock()
            .ok()
            .and_then(|mut t| t.remove(uid))
            .map(|t| t.probe);
        if let Some(probe) = probe
            && let Err(e) = probe.release().await
        {
            tracing::debug!(uid, error = %e.message, "releasing the probe session failed");
        }
    }

    /// Probes until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            let mut next = now + Duration::from_secs(1);
            if let Ok(mut targets) = self.inner.targets.lock() {
                for (uid, target) in targets.iter_mut() {
                    if target.in_flight {
                        continue;
                    }
                    if target.next_due <= now {
                        target.in_flight = true;
                        target.next_due += target.settings.period;
                        if target.next_due <= now {
                            target.next_due = now + target.settings.period;
                        }
                        due.push((
                            uid.clone(),
                            target.probe.clone(),
                            target.settings.failure_threshold,
                            target.cluster.clone(),
                        ));
                    }
                    next = next.min(target.next_due);
                }
            }
            for (uid, probe, threshold, cluster) in due {
                let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                    return;
                };
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    let result = probe.check().await;
                    drop(permit);
                    let outcome = match &result {
                        Ok(success) => {
                            inner
                                .metrics
                                .probe_latency
                                .observe(success.latency.as_secs_f64());
                            "ok"
                        }
                        Err(failure) => failure.kind.as_str(),
                    };
                    inner
                        .metrics
                        .probe_results
                        .with_label_values(&[outcome])
                        .inc();
                    let changed = inner.book.update(&uid, |h| h.record(&result, threshold));
                    let needs_version =
                        result.is_ok() && inner.book.get(&uid).spark_version.is_none();
                    if needs_version && let Ok(version) = probe.spark_version().await {
                        inner.book.update(&uid, |h| {
                            h.spark_version = Some(version);
                            false
                        });
                    }
                    if let Ok(mut targets) = inner.targets.lock()
                        && let Some(t) = targets.get_mut(&uid)
                    {
                        t.in_flight = false;
                    }
                    if changed || needs_version {
                        let _ = inner.trigger.unbounded_send(cluster);
                    }
                });
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.changed.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_and_stay_within_the_period() {
        let period = Duration::from_secs(10);
        let phases: std::collections::BTreeSet<u128> = (0..100)
            .map(|i| phase(&format!("uid-{i}"), period).as_millis())
            .collect();
        assert!(phases.len() > 90, "servers do not all probe at once");
        assert!(phases.iter().all(|p| *p < 10_000));
        assert_eq!(phase("a", period), phase("a", period));
    }
}
