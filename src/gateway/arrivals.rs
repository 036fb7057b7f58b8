//! The order in which this replica's watch first showed each gateway claim. One watch of a
//! resource delivers its events in the order the apiserver stored them, so every replica sees
//! new claims arrive in the order they were created. A quota that two replicas check each on
//! their own is exact when each admits a claim by the claims that arrived before it: both
//! replicas then decide alike, whichever saw what first.

use std::collections::{HashMap, HashSet};

use kube::Resource;
use kube::runtime::watcher;

/// Arrival numbers of the claims the watch shows, by uid.
#[derive(Debug, Default)]
pub struct Arrivals {
    next: u64,
    by_uid: HashMap<String, u64>,
    /// The uids a relist has shown so far (between its `Init` and `InitDone`).
    relisted: Option<HashSet<String>>,
}

impl Arrivals {
    /// Applies a watch event to the store (`to_store`) and notes it here, in the order that
    /// keeps every claim the store shows numbered: a claim seen for the first time gets the
    /// next number before the store shows it; a deleted one, or one a relist no longer shows,
    /// loses its number after the store has dropped it.
    pub fn apply_around<K: Resource>(
        &mut self,
        event: &watcher::Event<K>,
        to_store: impl FnOnce(),
    ) {
        let uid = |object: &K| object.meta().uid.clone();
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let Some(uid) = uid(object) {
                    self.note(&uid);
                    if let Some(relisted) = &mut self.relisted {
                        relisted.insert(uid);
                    }
                }
            }
            watcher::Event::Apply(object) => {
                if let Some(uid) = uid(object) {
                    self.note(&uid);
                }
            }
            watcher::Event::InitDone | watcher::Event::Delete(_) => {}
        }
        to_store();
        match event {
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisted.take() {
                    self.by_uid.retain(|uid, _| relisted.contains(uid));
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(uid) = uid(object) {
                    self.by_uid.remove(&uid);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::Apply(_) => {}
        }
    }

    fn note(&mut self, uid: &str) {
        if !self.by_uid.contains_key(uid) {
            self.by_uid.insert(uid.to_string(), self.next);
            self.next += 1;
        }
    }

    /// The arrival number of the claim with `uid`, if the watch has shown it.
    pub fn of(&self, uid: &str) -> Option<u64> {
        self.by_uid.get(uid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SparkConnectClaim;

    type Event = watcher::Event<SparkConnectClaim>;

    fn claim(uid: &str) -> SparkConnectClaim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
            "metadata": {"name": format!("c-{uid}"), "namespace": "data", "uid": uid},
            "spec": {"cluster": "science"}
        }))
        .expect("a claim")
    }

    fn watch(arrivals: &mut Arrivals, events: impl IntoIterator<Item = Event>) {
        for event in events {
            arrivals.apply_around(&event, || {});
        }
    }

    #[test]
    fn claims_are_numbered_in_the_order_the_watch_first_shows_them() {
        let mut arrivals = Arrivals::default();
        watch(
            &mut arrivals,
            [
                Event::Init,
                Event::InitApply(claim("a")),
                Event::InitDone,
                Event::Apply(claim("b")),
                // A later change of a claim keeps its place.
                Event::Apply(claim("a")),
                Event::Apply(claim("c")),
            ],
        );
        let order = |uid| arrivals.of(uid).expect("numbered");
        assert!(order("a") < order("b") && order("b") < order("c"));
        assert_eq!(arrivals.of("d"), None);
    }

    #[test]
    fn a_deleted_claim_or_one_a_relist_no_longer_shows_loses_its_number() {
        let mut arrivals = Arrivals::default();
        watch(
            &mut arrivals,
            ["a", "b", "c"].map(|uid| Event::Apply(claim(uid))),
        );
        watch(&mut arrivals, [Event::Delete(claim("a"))]);
        assert_eq!(arrivals.of("a"), None);
        let before = arrivals.of("c");
        watch(
            &mut arrivals,
            [
                Event::Init,
                Event::InitApply(claim("c")),
                Event::InitApply(claim("d")),
                Event::InitDone,
            ],
        );
        assert_eq!(arrivals.of("b"), None, "gone while the watch was down");
        assert_eq!(
            arrivals.of("c"),
            before,
            "a claim seen before keeps its place"
        );
        assert!(
            arrivals.of("d") > before,
            "a claim first shown by the relist comes after"
        );
    }
}
