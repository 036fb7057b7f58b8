//! What every reconcile needs, in one value shared by the controllers.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use tokio::sync::Semaphore;

use super::guard::{Liveness, Retries};
use super::known_tokens::KnownTokens;
use super::pool::allocator::Allocator;
use super::pool::autoscale::Autoscaler;
use super::pool::backoff::StartBackoff;
use super::stores::Stores;
use crate::builders::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::probe::prober::Prober;

/// Events published at once; more wait their turn (first come, first served).
const EVENTS_IN_FLIGHT: usize = 4;

/// What every reconcile needs.
pub struct Context {
    /// The API client for requests (timeouts, fenced by the leader Lease, counting writes).
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
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
    /// What the watches have seen: read instead of listing.
    pub stores: Stores,
    /// Per-object retry delays after errors.
    pub retries: Retries,
    /// Reconciles in flight, for /healthz.
    pub liveness: Liveness,
    /// Tokens of pool servers this process knows.
    pub tokens: KnownTokens,
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
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            prober,
            backoff: StartBackoff::default(),
            autoscaler: Autoscaler::default(),
            allocator: Allocator::default(),
            stores,
            retries: Retries::default(),
            liveness: Liveness::default(),
            events_in_flight: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
        })
    }

    /// A shared handle on this context (for work spawned off a reconcile).
    pub fn me(&self) -> Option<Arc<Context>> {
        self.me.upgrade()
    }

    /// Publishes an Event on `object` in the background: Events never delay a reconcile or a
    /// bind, go out a few at a time in the order they were made (a burst of binds does not
    /// send a burst of Events competing with it for the apiserver), and a failure to publish
    /// is only logged.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let reference = object.object_ref(&());
        let recorder = self.recorder.clone();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1024).collect()),
            action: reason.into(),
            secondary: None,
        };
        let reason = reason.to_string();
        let in_flight = self.events_in_flight.clone();
        tokio::spawn(async move {
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return;
            };
            let publish = recorder.publish(&event, &reference);
            match tokio::time::timeout(Duration::from_secs(10), publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, %reason, "publishing event failed"),
                Err(_) => tracing::warn!(%reason, "publishing event timed out"),
            }
        });
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
