//! One Event recorder per object the Events are about. kube's `Recorder` keeps the Events it
//! published in the last six minutes, to count repeats as a series, and sweeps that whole cache
//! on every publish: one recorder for the whole operator made each Event cost as much as every
//! Event of the last six minutes (a burst of 500 claims publishes thousands). A recorder per
//! object keeps the same series (a series is always about one object) while each sweep sees
//! only that object's Events. Recorders unused for longer than the cache keeps an Event are
//! dropped, looked for at most once a `SWEEP_EVERY`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

/// How long kube's recorder keeps a published Event to count repeats: after this long unused,
/// a recorder holds nothing worth keeping.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The most often unused recorders are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Which object an Event is about: its uid when the reference has one, else its kind,
/// namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Regarding {
    uid: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Regarding {
    fn of(reference: &ObjectReference) -> Self {
        match &reference.uid {
            Some(uid) => Self {
                uid: Some(uid.clone()),
                ..Self::default()
            },
            None => Self {
                uid: None,
                kind: reference.kind.clone(),
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
            },
        }
    }
}

/// The recorders, by the object their Events are about.
pub struct Recorders {
    client: Client,
    reporter: Reporter,
    by_object: Mutex<ByObject>,
}

/// The recorders and when each was last used, and when unused ones were last looked for.
struct ByObject {
    recorders: HashMap<Regarding, (Recorder, Instant)>,
    swept: Instant,
}

impl Recorders {
    /// Recorders publishing through `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter, now: Instant) -> Self {
        Self {
            client,
            reporter,
            by_object: Mutex::new(ByObject {
                recorders: HashMap::new(),
                swept: now,
            }),
        }
    }

    /// The recorder for Events about `regarding`, used at `now`.
    pub fn about(&self, regarding: &ObjectReference, now: Instant) -> Recorder {
        let new = || Recorder::new(self.client.clone(), self.reporter.clone());
        let Ok(mut by_object) = self.by_object.lock() else {
            // A poisoned map only loses the series of repeats, not the Event.
            return new();
        };
        if now.saturating_duration_since(by_object.swept) >= SWEEP_EVERY {
            by_object
                .recorders
                .retain(|_, (_, used)| now.saturating_duration_since(*used) < SERIES_WINDOW);
            by_object.swept = now;
        }
        let (recorder, used) = by_object
            .recorders
            .entry(Regarding::of(regarding))
            .or_insert_with(|| (new(), now));
        *used = now;
        recorder.clone()
    }

    /// How many objects have a recorder kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.by_object.lock().map_or(0, |b| b.recorders.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorders(now: Instant) -> Recorders {
        let (service, _apiserver): (_, crate::test_support::MockApiserver) =
            tower_test::mock::pair();
        let client = Client::new(service, "default");
        let reporter = Reporter {
            controller: "test".into(),
            instance: None,
        };
        Recorders::new(client, reporter, now)
    }

    fn claim(name: &str, uid: Option<&str>) -> ObjectReference {
        ObjectReference {
            kind: Some("SparkConnectClaim".into()),
            namespace: Some("team".into()),
            name: Some(name.into()),
            uid: uid.map(Into::into),
            ..ObjectReference::default()
        }
    }

    #[tokio::test]
    async fn each_object_gets_its_own_recorder_and_keeps_it() {
        let t0 = Instant::now();
        let recorders = recorders(t0);
        recorders.about(&claim("a", Some("uid-a")), t0);
        recorders.about(&claim("b", Some("uid-b")), t0);
        recorders.about(&claim("a", Some("uid-a")), t0);
        recorders.about(&claim("c", None), t0);
        recorders.about(&claim("c", None), t0);
        assert_eq!(recorders.kept(), 3);
    }

    #[tokio::test]
    async fn a_new_object_of_an_old_name_is_another_object() {
        let t0 = Instant::now();
        let recorders = recorders(t0);
        recorders.about(&claim("a", Some("uid-1")), t0);
        recorders.about(&claim("a", Some("uid-2")), t0);
        assert_eq!(recorders.kept(), 2);
    }

    #[tokio::test]
    async fn recorders_unused_for_the_series_window_are_dropped_at_the_next_sweep() {
        let t0 = Instant::now();
        let recorders = recorders(t0);
        recorders.about(&claim("old", Some("uid-old")), t0);
        let later = t0 + SERIES_WINDOW - SWEEP_EVERY;
        recorders.about(&claim("recent", Some("uid-recent")), later);
        let after = t0 + SERIES_WINDOW + Duration::from_secs(1);
        recorders.about(&claim("new", Some("uid-new")), after);
        assert_eq!(recorders.kept(), 2, "old dropped, recent and new kept");
    }

    #[tokio::test]
    async fn unused_recorders_are_looked_for_at_most_once_a_sweep_period() {
        let t0 = Instant::now();
        let recorders = recorders(t0);
        recorders.about(&claim("old", Some("uid-old")), t0);
        // Swept just before the old one's window ends: kept.
        let before_end = t0 + SERIES_WINDOW - Duration::from_secs(1);
        recorders.about(&claim("x", Some("uid-x")), before_end);
        // The window ends, but the last sweep was less than a period ago: still kept.
        let soon_after = before_end + Duration::from_secs(2);
        recorders.about(&claim("y", Some("uid-y")), soon_after);
        assert_eq!(recorders.kept(), 3);
        recorders.about(&claim("z", Some("uid-z")), before_end + SWEEP_EVERY);
        assert_eq!(recorders.kept(), 3, "old dropped, x y z kept");
    }
}
