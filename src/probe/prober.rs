//! The prober: probes every server the operator owns on its own schedule, spread over the
//! period, with bounded concurrency, independent of the reconcile loop. Targets wait in a
//! due-time queue, so a round costs only the probes that are due, never a scan of all
//! targets, and probes due within a moment of each other go out in one wake-up. A verdict
//! change triggers a reconcile of the server's cluster.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::client::ConnectProbe;
use super::health::{HealthBook, WarmupState};
use super::transport::ConnectionBudget;
use super::warmup::{WarmupPlan, warm_up};
use crate::crd::SparkConnectCluster;
use crate::metrics::Metrics;

/// A server to probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTarget {
    /// Pod UID (the key of its health).
    pub uid: String,
    /// `ip:port` of its Connect endpoint.
    pub address: String,
    /// The token the server holds, when it checks one.
    pub token: Option<String>,
    /// The warm-up it must pass before it is handed out (a starting server of a cluster with
    /// warm-up on).
    pub warmup: Option<Arc<WarmupPlan>>,
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
    warmup: Option<Arc<WarmupPlan>>,
    /// Bumped whenever the target is replaced: queue entries of older generations are stale.
    generation: u64,
}

/// A probe to run now.
struct DueProbe {
    uid: String,
    probe: ConnectProbe,
    threshold: u32,
    cluster: ObjectRef<SparkConnectCluster>,
    warmup: Option<Arc<WarmupPlan>>,
}

/// A queue entry: when, which target, of which generation.
type Due = Reverse<(Instant, u64, String)>;

#[derive(Default)]
struct Targets {
    by_uid: HashMap<String, Target>,
    /// The uids of each cluster's targets, so a cluster's sync costs its own servers only.
    by_cluster: HashMap<ObjectRef<SparkConnectCluster>, HashSet<String>>,
    due: BinaryHeap<Due>,
    next_generation: u64,
}

impl Targets {
    fn insert(&mut self, uid: String, target: Target) {
        let moved = self
            .by_uid
            .get(&uid)
            .map(|old| old.cluster.clone())
            .filter(|old| old != &target.cluster);
        if let Some(old) = moved {
            self.leave_cluster(&old, &uid);
        }
        self.by_cluster
            .entry(target.cluster.clone())
            .or_default()
            .insert(uid.clone());
        self.by_uid.insert(uid, target);
    }

    fn leave_cluster(&mut self, cluster: &ObjectRef<SparkConnectCluster>, uid: &str) {
        if let Some(uids) = self.by_cluster.get_mut(cluster) {
            uids.remove(uid);
            if uids.is_empty() {
                self.by_cluster.remove(cluster);
            }
        }
    }

    fn remove(&mut self, uid: &str) -> Option<Target> {
        let target = self.by_uid.remove(uid)?;
        self.leave_cluster(&target.cluster, uid);
        Some(target)
    }

    /// The uids of `cluster`'s targets.
    fn of_cluster(&self, cluster: &ObjectRef<SparkConnectCluster>) -> Vec<String> {
        self.by_cluster
            .get(cluster)
            .map(|uids| uids.iter().cloned().collect())
            .unwrap_or_default()
    }
}

struct Inner {
    targets: Mutex<Targets>,
    book: Arc<HealthBook>,
    metrics: Metrics,
    trigger: UnboundedSender<ObjectRef<SparkConnectCluster>>,
    permits: Arc<Semaphore>,
    warmup_permits: Arc<Semaphore>,
    connections: Arc<ConnectionBudget>,
    changed: Notify,
}

/// Warm-ups that may run at once (each keeps a server's Spark busy for seconds).
const MAX_WARMUPS_IN_FLIGHT: usize = 16;
/// Probes due within this moment after the first are sent in the same wake-up: with
/// thousands of servers spread over a period, the prober wakes a few dozen times a second
/// instead of once per probe. A probe goes out at most this much early, and keeps its phase.
const COALESCE: Duration = Duration::from_millis(50);

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
    /// A prober recording into `book`, running at most `max_in_flight` probes at once and
    /// keeping at most `max_connections` server connections open between probes.
    pub fn new(
        book: Arc<HealthBook>,
        metrics: Metrics,
        trigger: UnboundedSender<ObjectRef<SparkConnectCluster>>,
        max_in_flight: usize,
        max_connections: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets: Mutex::default(),
                book,
                metrics,
                trigger,
                permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
                warmup_permits: Arc::new(Semaphore::new(MAX_WARMUPS_IN_FLIGHT)),
                connections: ConnectionBudget::new(max_connections),
                changed: Notify::new(),
            }),
        }
    }

    /// Connections kept open now.
    pub fn open_connections(&self) -> usize {
        self.inner.connections.open()
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
        let wanted: HashSet<&str> = servers.iter().map(|s| s.uid.as_str()).collect();
        for uid in targets.of_cluster(cluster) {
            if !wanted.contains(uid.as_str()) {
                targets.remove(&uid);
            }
        }
        let now = Instant::now();
        for server in servers {
            if let Some(target) = targets.by_uid.get_mut(&server.uid).filter(|t| {
                &t.cluster == cluster
                    && t.address == server.address
                    && t.token == server.token
                    && &t.settings == settings
            }) {
                target.warmup.clone_from(&server.warmup);
                continue;
            }
            let session = super::client::session_id(&server.uid);
            match ConnectProbe::within_budget(
                &server.address,
                server.token.clone(),
                session,
                settings.timeout,
                self.inner.connections.clone(),
            ) {
                Ok(probe) => {
                    targets.next_generation += 1;
                    let generation = targets.next_generation;
                    let due = now + phase(&server.uid, settings.period);
                    targets
                        .due
                        .push(Reverse((due, generation, server.uid.clone())));
                    targets.insert(
                        server.uid.clone(),
                        Target {
                            cluster: cluster.clone(),
                            address: server.address.clone(),
                            token: server.token.clone(),
                            settings: settings.clone(),
                            probe,
                            warmup: server.warmup.clone(),
                            generation,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(address = %server.address, error = %e.message, "cannot probe server")
                }
            }
        }
        let count = targets.by_cluster.get(cluster).map_or(0, HashSet::len);
        self.inner
            .metrics
            .probe_targets
            .with_label_values(&cluster_labels(cluster))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.forget_strays(targets);
        self.inner.changed.notify_one();
    }

    /// Stops probing every server of a deleted cluster.
    pub fn forget_cluster(&self, cluster: &ObjectRef<SparkConnectCluster>) {
        if let Ok(mut targets) = self.inner.targets.lock() {
            for uid in targets.of_cluster(cluster) {
                targets.remove(&uid);
            }
            self.forget_strays(&targets);
        }
        let _ = self
            .inner
            .metrics
            .probe_targets
            .remove_label_values(&cluster_labels(cluster));
    }

    /// Drops the health of servers that are no longer probed (removed, or recorded by a probe
    /// that finished after its server was removed). The book holding more servers than there
    /// are targets is the cheap sign of strays; the scan runs only then.
    fn forget_strays(&self, targets: &Targets) {
        if self.inner.book.recorded() > targets.by_uid.len() {
            self.inner
                .book
                .retain(|uid| targets.by_uid.contains_key(uid));
        }
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
            .and_then(|mut t| t.remove(uid))
            .map(|t| t.probe);
        if let Some(probe) = probe
            && let Err(e) = probe.release().await
        {
            tracing::debug!(uid, error = %e.message, "releasing the probe session failed");
        }
    }

    /// The probes due now or within [`COALESCE`] of it (their next turn already queued), and
    /// when the next one is due.
    fn take_due(&self, now: Instant) -> (Vec<DueProbe>, Instant) {
        let mut due = Vec::new();
        let mut next = now + Duration::from_secs(1);
        let Ok(mut targets) = self.inner.targets.lock() else {
            return (due, next);
        };
        let targets = &mut *targets;
        while let Some(Reverse((when, generation, uid))) = targets.due.peek().cloned() {
            if when > now + COALESCE {
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
                warmup: target.warmup.clone(),
            });
        }
        (due, next)
    }

    /// Probes until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (due, next) = self.take_due(Instant::now());
            for due in due {
                let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(self.inner.clone().probe_once(due, permit));
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.changed.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

impl Inner {
    /// One probe, then the server's warm-up when it is due one; a changed verdict, a newly
    /// learnt version or a finished warm-up triggers the cluster.
    async fn probe_once(self: Arc<Self>, due: DueProbe, permit: OwnedSemaphorePermit) {
        let DueProbe {
            uid,
            probe,
            threshold,
            cluster,
            warmup,
        } = due;
        let result = probe.check().await;
        drop(permit);
        let outcome = match &result {
            Ok(success) => {
                self.metrics
                    .probe_latency
                    .observe(success.latency.as_secs_f64());
                "ok"
            }
            Err(failure) => failure.kind.as_str(),
        };
        self.metrics
            .probe_results
            .with_label_values(&[outcome])
            .inc();
        let changed = self.book.update(&uid, |h| h.record(&result, threshold));
        let needs_version = result.is_ok() && self.book.get(&uid).spark_version.is_none();
        if needs_version && let Ok(version) = probe.spark_version().await {
            self.book.update(&uid, |h| {
                h.spark_version = Some(version);
                false
            });
        }
        if changed || needs_version {
            let _ = self.trigger.unbounded_send(cluster.clone());
        }
        if let (Ok(_), Some(plan)) = (&result, warmup) {
            self.warm_up(&uid, &probe, &plan, cluster).await;
        }
    }

    /// Runs the warm-up of a server that has not passed one (at most one at a time per server).
    async fn warm_up(
        &self,
        uid: &str,
        probe: &ConnectProbe,
        plan: &WarmupPlan,
        cluster: ObjectRef<SparkConnectCluster>,
    ) {
        let start = self.book.update(uid, |h| {
            let due = matches!(h.warmup, WarmupState::NotStarted | WarmupState::Failed(_));
            if due {
                h.warmup = WarmupState::Running;
            }
            due
        });
        if !start {
            return;
        }
        let Ok(_permit) = self.warmup_permits.acquire().await else {
            return;
        };
        let result = warm_up(probe, plan).await;
        let outcome = match &result {
            Ok(done) => {
                self.metrics.warmup_seconds.observe(done.took.as_secs_f64());
                tracing::info!(
                    uid,
                    millis = done.took.as_millis(),
                    rows = done.rows,
                    "server warmed up"
                );
                "ok"
            }
            Err(failure) => {
                tracing::warn!(uid, error = %failure, "server warm-up failed");
                if failure.unauthenticated {
                    "unauthenticated"
                } else {
                    "failed"
                }
            }
        };
        self.metrics.warmups.with_label_values(&[outcome]).inc();
        self.book.update(uid, |h| {
            h.warmup = match result {
                Ok(done) => WarmupState::Done(done.took),
                Err(failure) => WarmupState::Failed(failure.to_string()),
            };
            false
        });
        let _ = self.trigger.unbounded_send(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fake::{FAILING_QUERY_MARK, FakeOptions, FakeState, serve};
    use crate::probe::health::{ServerHealth, Verdict};
    use crate::probe::warmup::built_in_steps;
    use futures::StreamExt;

    /// A prober over one fake server whose target wants `plan`; returns the book's view of it
    /// once the prober has triggered the cluster `triggers` times.
    async fn probe_with_warmup(
        plan: WarmupPlan,
        triggers: usize,
    ) -> (ServerHealth, Arc<FakeState>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = FakeState::with_options(FakeOptions::default());
        tokio::spawn(serve(listener, state.clone(), std::future::pending()));
        let (trigger, mut triggered) = futures::channel::mpsc::unbounded();
        let prober = Prober::new(Arc::default(), Metrics::new().unwrap(), trigger, 8, 8);
        let cluster = ObjectRef::new("c").within("ns");
        let target = ProbeTarget {
            uid: "uid-1".into(),
            address,
            token: None,
            warmup: Some(Arc::new(plan)),
        };
        let settings = ProbeSettings {
            period: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failure_threshold: 1,
        };
        prober.sync(&cluster, &[target], &settings);
        tokio::spawn(prober.clone().run(std::future::pending()));
        for _ in 0..triggers {
            tokio::time::timeout(Duration::from_secs(10), triggered.next())
                .await
                .expect("the prober triggers the cluster");
        }
        (prober.book().get("uid-1"), state)
    }

    #[tokio::test]
    async fn a_starting_server_is_warmed_up_once_after_its_first_passed_probe() {
        // Triggers: the verdict Healthy, then the finished warm-up.
        let (health, state) =
            probe_with_warmup(WarmupPlan::new(&[], 2, Duration::from_secs(5)), 2).await;
        assert_eq!(health.verdict, Verdict::Healthy);
        assert!(
            matches!(health.warmup, WarmupState::Done(_)),
            "{:?}",
            health.warmup
        );
        assert_eq!(
            state.queries_run(),
            built_in_steps().len() * 2,
            "once: the built-in set in each warm-up session, no more"
        );
    }

    #[tokio::test]
    async fn a_failed_warm_up_is_recorded_with_its_reason() {
        let queries = vec![format!("SELECT * FROM {FAILING_QUERY_MARK}")];
        let (health, _) =
            probe_with_warmup(WarmupPlan::new(&queries, 1, Duration::from_secs(5)), 2).await;
        match health.warmup {
            WarmupState::Failed(why) => assert!(why.contains("query 1 of 1"), "{why}"),
            other => panic!("expected a failed warm-up, got {other:?}"),
        }
    }

    fn targets_at(uids: &[&str]) -> Vec<ProbeTarget> {
        uids.iter()
            .map(|uid| ProbeTarget {
                uid: (*uid).into(),
                address: "127.0.0.1:9".into(),
                token: None,
                warmup: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_clusters_sync_drops_its_own_gone_servers_and_no_other_clusters() {
        let (trigger, _triggered) = futures::channel::mpsc::unbounded();
        let book = Arc::new(HealthBook::default());
        let prober = Prober::new(book.clone(), Metrics::new().unwrap(), trigger, 8, 8);
        let settings = ProbeSettings {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 1,
        };
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        prober.sync(&a, &targets_at(&["a1", "a2", "a3"]), &settings);
        prober.sync(&b, &targets_at(&["b1", "b2"]), &settings);
        for uid in ["a1", "a2", "a3", "b1", "b2"] {
            book.seed(uid, Verdict::Healthy);
        }
        assert_eq!(prober.targets(), 5);

        prober.sync(&a, &targets_at(&["a1", "a3"]), &settings);
        assert_eq!(prober.targets(), 4, "only a2 is gone");
        assert_eq!(
            book.get("a2").verdict,
            Verdict::Unknown,
            "its health is forgotten"
        );
        for uid in ["a1", "a3", "b1", "b2"] {
            assert_eq!(book.get(uid).verdict, Verdict::Healthy, "{uid} is kept");
        }

        prober.forget_cluster(&b);
        assert_eq!(prober.targets(), 2);
        assert_eq!(book.get("b1").verdict, Verdict::Unknown);
        assert_eq!(book.get("a1").verdict, Verdict::Healthy);

        // A probe that finished after its server went records a stray; the next sync drops it.
        book.seed("gone", Verdict::Healthy);
        prober.sync(&a, &targets_at(&["a1", "a3"]), &settings);
        assert_eq!(book.get("gone").verdict, Verdict::Unknown);
        assert_eq!(book.recorded(), 2);
    }

    #[tokio::test]
    async fn probes_due_within_a_moment_of_each_other_go_out_in_one_wake_up() {
        let (trigger, _triggered) = futures::channel::mpsc::unbounded();
        let prober = Prober::new(Arc::default(), Metrics::new().unwrap(), trigger, 8, 8);
        let settings = ProbeSettings {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 1,
        };
        let uids: Vec<String> = (0..2000).map(|i| format!("uid-{i}")).collect();
        let names: Vec<&str> = uids.iter().map(String::as_str).collect();
        let (cluster, targets) = (ObjectRef::new("c").within("ns"), targets_at(&names));
        let synced = Instant::now();
        prober.sync(&cluster, &targets, &settings);
        let halfway = Duration::from_secs(5);
        let (due, next) = prober.take_due(synced + halfway);
        let taken: HashSet<&str> = due.iter().map(|d| d.uid.as_str()).collect();
        // `sync` queued each target at its phase after an instant just past `synced` (six of
        // the phases fall within 30 ms after `halfway`).
        let margin = Duration::from_millis(20);
        for uid in &uids {
            let at = phase(uid, settings.period);
            if at + margin <= halfway + COALESCE {
                assert!(taken.contains(uid.as_str()), "{uid} at {at:?} is due");
            } else if at > halfway + COALESCE + margin {
                assert!(!taken.contains(uid.as_str()), "{uid} at {at:?} is not due");
            }
        }
        let due_by_now = uids
            .iter()
            .filter(|uid| phase(uid, settings.period) <= halfway)
            .count();
        assert!(
            due.len() > due_by_now,
            "probes due a moment later go out with those due now: {} vs {due_by_now}",
            due.len()
        );
        assert!(next + margin > synced + halfway + COALESCE, "{next:?}");
    }

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
