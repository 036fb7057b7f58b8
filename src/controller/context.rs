//! What every reconcile needs, in one value shared by the controllers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::reflector::ObjectRef;

use tokio::sync::Semaphore;

use super::applied::Applied;
use super::guard::{Liveness, Retries};
use super::known_tokens::KnownTokens;
use super::ledger::Ledgers;
use super::pool::allocator::Allocator;
use super::pool::autoscale::Autoscaler;
use super::pool::backoff::StartBackoff;
use super::recorders::Recorders;
use super::stores::Stores;
use crate::builders::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::probe::prober::Prober;

/// Events published at once; more wait their turn (first come, first served).
const EVENTS_IN_FLIGHT: usize = 4;
/// Binds count as quiet (a burst is over) once none has been under way, or handed out, for this
/// long.
pub const BINDS_QUIET: Duration = Duration::from_millis(250);
/// The longest new pool servers wait for a burst of binds, counted from the burst's first
/// handout; a burst ends only after this long without binds.
pub const MAX_REFILL_HOLD: Duration = Duration::from_secs(2);
/// The longest an Event waits for binds to be quiet.
const MAX_EVENT_HOLD: Duration = Duration::from_secs(2);

/// What every reconcile needs.
pub struct Context {
    /// The API client for requests (timeouts, fenced by the leader Lease, counting writes).
    pub client: Client,
    /// Publishes Events, one recorder per object they are about.
    pub recorders: Recorders,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Probes every server; its health book is what "healthy" means.
    pub prober: Prober,
    /// Slows down replacing servers that fail to start.
    pub backoff: StartBackoff,
    /// Demand-driven idle targets.
    pub autoscaler: Autoscaler,
    /// Waiting claims and the servers handed to them.
    pub allocator: Allocator,
    /// Children each cluster's last reconcile found as wanted.
    pub applied: Applied,
    /// What the watches have seen: read instead of listing.
    pub stores: Stores,
    /// Per-object retry delays after errors.
    pub retries: Retries,
    /// Reconciles in flight, for /healthz.
    pub liveness: Liveness,
    /// Tokens of pool servers this process knows.
    pub tokens: KnownTokens,
    /// Bind writes under way: Events wait until they are quiet.
    pub binds: Arc<BindActivity>,
    /// Each cluster's turn at its bind ledger.
    pub ledgers: Ledgers,
    /// Events being published at once (see [`Context::event`]).
    events_in_flight: Arc<Semaphore>,
    me: Weak<Context>,
}

impl Context {
    /// A context for `client`, reading `stores`.
    pub fn new(client: Client, metrics: Metrics, prober: Prober, stores: Stores) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            tokens: KnownTokens::default(),
            recorders: Recorders::new(client.clone(), reporter, Instant::now()),
            client,
            metrics,
            prober,
            backoff: StartBackoff::default(),
            autoscaler: Autoscaler::default(),
            allocator: Allocator::default(),
            applied: Applied::default(),
            stores,
            retries: Retries::default(),
            liveness: Liveness::default(),
            binds: Arc::default(),
            ledgers: Ledgers::default(),
            events_in_flight: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
        })
    }

    /// A shared handle on this context (for work spawned off a reconcile).
    pub fn me(&self) -> Option<Arc<Context>> {
        self.me.upgrade()
    }

    /// Publishes an Event on `object` in the background: Events never delay a reconcile or a
    /// bind, go out a few at a time in the order they were made, and wait while binds are
    /// under way (at most [`MAX_EVENT_HOLD`]), so a burst of binds does not compete with its
    /// own Events for the apiserver. A failure to publish is only logged.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        self.publish(object.object_ref(&()), None, type_, reason, note);
    }

    /// Publishes an Event on `cluster` about its server pod `server`, which the Event names as
    /// its related object: Events of one reason about different servers are kept apart (the
    /// recorder counts Events of one reason, object and related object as a series, keeping
    /// the first note).
    pub fn server_event<K: Resource<DynamicType = ()>>(
        &self,
        cluster: &K,
        server: &str,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let regarding = cluster.object_ref(&());
        let related = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(server.into()),
            namespace: regarding.namespace.clone(),
            ..ObjectReference::default()
        };
        self.publish(regarding, Some(related), type_, reason, note);
    }

    fn publish(
        &self,
        reference: ObjectReference,
        secondary: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let recorder = self.recorders.about(&reference, Instant::now());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1024).collect()),
            action: reason.into(),
            secondary,
        };
        let reason = reason.to_string();
        let in_flight = self.events_in_flight.clone();
        let binds = self.binds.clone();
        tokio::spawn(async move {
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return;
            };
            let give_up = Instant::now() + MAX_EVENT_HOLD;
            while let Some(wait) = binds.quiet_in(BINDS_QUIET, Instant::now()) {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(wait.min(left)).await;
            }
            let publish = recorder.publish(&event, &reference);
            match tokio::time::timeout(Duration::from_secs(10), publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, %reason, "publishing event failed"),
                Err(_) => tracing::warn!(%reason, "publishing event timed out"),
            }
        });
    }
}

/// Bind writes under way in this process, and when the last one ended.
#[derive(Default)]
pub struct BindActivity {
    in_flight: AtomicUsize,
    last_ended: Mutex<Option<Instant>>,
}

impl BindActivity {
    /// Counts a bind under way until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> BindUnderWay {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        BindUnderWay(self.clone())
    }

    /// Whether any bind's writes are under way.
    pub fn under_way(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// How long from `now` until binds will have been quiet for `quiet`; `None` once they have.
    pub fn quiet_in(&self, quiet: Duration, now: Instant) -> Option<Duration> {
        if self.under_way() {
            return Some(quiet);
        }
        let ended = (*self.last_ended.lock().ok()?)?;
        quiet
            .checked_sub(now.saturating_duration_since(ended))
            .filter(|d| !d.is_zero())
    }
}

/// A bind under way (see [`BindActivity::begin`]).
pub struct BindUnderWay(Arc<BindActivity>);

impl Drop for BindUnderWay {
    fn drop(&mut self) {
        if let Ok(mut ended) = self.0.last_ended.lock() {
            *ended = Some(Instant::now());
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `namespace/name` of a cluster: the key of everything this process keeps per cluster (retry
/// delays, the allocator's line, autoscaler demand, start backoff).
pub fn cluster_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The kind-qualified reference of an object, the key of per-object state.
pub fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> String {
    ObjectRef::from_obj(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(250);

    #[test]
    fn binds_are_quiet_only_when_none_is_under_way_and_the_last_ended_long_enough_ago() {
        let binds = Arc::new(BindActivity::default());
        let start = Instant::now();
        assert_eq!(binds.quiet_in(QUIET, start), None, "no bind yet");
        let first = binds.begin();
        let second = binds.begin();
        assert_eq!(binds.quiet_in(QUIET, start), Some(QUIET));
        assert!(binds.under_way());
        drop(first);
        assert_eq!(
            binds.quiet_in(QUIET, start),
            Some(QUIET),
            "one still under way"
        );
        drop(second);
        assert!(!binds.under_way());
        let ended = Instant::now();
        let later = ended + Duration::from_millis(100);
        let left = binds.quiet_in(QUIET, later).expect("not quiet yet");
        assert!(left <= Duration::from_millis(150), "{left:?}");
        assert_eq!(binds.quiet_in(QUIET, ended + QUIET), None);
    }
}
