//! The prober: probes every server the operator owns on its own schedule, spread over the
//! period, with bounded concurrency, independent of the reconcile loop. Targets wait in a
//! due-time queue, so a round costs only the probes that are due, never a scan of all
//! targets. A verdict change triggers a reconcile of the server's cluster.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
    /// The token the server holds, when it checks one.
    pub token: Option<String>,
}

/// Probe settings of a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSettings {
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
    token: Option<String>,
    settings: ProbeSettings,
    probe: ConnectProbe,
    /// Bumped whenever the target is replaced: queue entries of older generations are stale.
    generation: u64,
}

/// A probe to run now.
struct DueProbe {
    uid: String,
    probe: ConnectProbe,
    threshold: u32,
    cluster: ObjectRef<SparkConnectCluster>,
}

/// A queue entry: when, which target, of which generation.
type Due = Reverse<(Instant, u64, String)>;

#[derive(Default)]
struct Targets {
    by_uid: HashMap<String, Target>,
    due: BinaryHeap<Due>,
    next_generation: u64,
}

struct Inner {
    targets: Mutex<Targets>,
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
    let millis = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hash % millis)
}

fn cluster_labels(cluster: &ObjectRef<SparkConnectCluster>) -> [String; 2] {
    [
        cluster.namespace.clone().unwrap_or_default(),
        cluster.name.clone(),
    ]
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
        let targets = &mut *targets;
        targets
            .by_uid
            .retain(|uid, t| &t.cluster != cluster || servers.iter().any(|s| &s.uid == uid));
        let now = Instant::now();
        for server in servers {
            let current = targets.by_uid.get(&server.uid).is_some_and(|t| {
                t.address == server.address && t.token == server.token && &t.settings == settings
            });
            if current {
                continue;
            }
            let session = super::client::session_id(&server.uid);
            match ConnectProbe::new(
                &server.address,
                server.token.clone(),
                session,
                settings.timeout,
            ) {
                Ok(probe) => {
                    targets.next_generation += 1;
                    let generation = targets.next_generation;
                    let due = now + phase(&server.uid, settings.period);
                    targets
                        .due
                        .push(Reverse((due, generation, server.uid.clone())));
                    targets.by_uid.insert(
                        server.uid.clone(),
                        Target {
                            cluster: cluster.clone(),
                            address: server.address.clone(),
                            token: server.token.clone(),
                            settings: settings.clone(),
                            probe,
                            generation,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(address = %server.address, error = %e.message, "cannot probe server")
                }
            }
        }
        let count = targets
            .by_uid
            .values()
            .filter(|t| &t.cluster == cluster)
            .count();
        self.inner
            .metrics
            .probe_targets
            .with_label_values(&cluster_labels(cluster))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.inner
            .book
            .retain(|uid| targets.by_uid.contains_key(uid));
        self.inner.changed.notify_one();
    }

    /// Stops probing every server of a deleted cluster.
    pub fn forget_cluster(&self, cluster: &ObjectRef<SparkConnectCluster>) {
        if let Ok(mut targets) = self.inner.targets.lock() {
            targets.by_uid.retain(|_, t| &t.cluster != cluster);
            let alive: std::collections::HashSet<String> = targets.by_uid.keys().cloned().collect();
            self.inner.book.retain(|uid| alive.contains(uid));
        }
        let _ = self
            .inner
            .metrics
            .probe_targets
            .remove_label_values(&cluster_labels(cluster));
    }

    /// Number of servers being probed.
    pub fn targets(&self) -> usize {
        self.inner
            .targets
            .lock()
            .map(|t| t.by_uid.len())
            .unwrap_or(0)
    }

    /// Releases the probe session of a server that is being retired (best effort).
    pub async fn release(&self, uid: &str) {
        let probe = self
            .inner
            .targets
            .lock()
            .ok()
            .and_then(|mut t| t.by_uid.remove(uid))
            .map(|t| t.probe);
        if let Some(probe) = probe
            && let Err(e) = probe.release().await
        {
            tracing::debug!(uid, error = %e.message, "releasing the probe session failed");
        }
    }

    /// The probes due now (their next turn already queued) and when the next one is due.
    fn take_due(&self, now: Instant) -> (Vec<DueProbe>, Instant) {
        let mut due = Vec::new();
        let mut next = now + Duration::from_secs(1);
        let Ok(mut targets) = self.inner.targets.lock() else {
            return (due, next);
        };
        let targets = &mut *targets;
        while let Some(Reverse((when, generation, uid))) = targets.due.peek().cloned() {
            if when > now {
                next = next.min(when);
                break;
            }
            targets.due.pop();
            let Some(target) = targets
                .by_uid
                .get(&uid)
                .filter(|t| t.generation == generation)
            else {
                continue; // removed or replaced since it was queued
            };
            let mut again = when + target.settings.period;
            if again <= now {
                again = now + target.settings.period;
            }
            targets.due.push(Reverse((again, generation, uid.clone())));
            due.push(DueProbe {
                uid,
                probe: target.probe.clone(),
                threshold: target.settings.failure_threshold,
                cluster: target.cluster.clone(),
            });
        }
        (due, next)
    }

    /// Probes until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (due, next) = self.take_due(Instant::now());
            for DueProbe {
                uid,
                probe,
                threshold,
                cluster,
            } in due
            {
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
