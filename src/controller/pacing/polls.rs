//! When each open session is observed again (polled), and the stream that asks for those
//! reconciles.
//!
//! A poll could be a requeue in the controller's scheduler, but the scheduler keeps two copies of
//! an object reference (four strings) per queued object: holding 10,000 open sessions, that was a
//! fifth of the operator's heap. Here a poll is one small entry per observed resource, and a scan
//! every [`SCAN_EVERY`] asks for the reconciles that are due.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::Stream;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::resource::RemoteAssistance;

/// How often due polls are looked for, at most (a poll is at most this late); a quarter of
/// the poll interval when that is shorter.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// Every this many scans, entries of resources no longer in the cache are dropped.
const SWEEP_EVERY_SCANS: u64 = 60;

#[derive(Debug, Clone, Copy)]
struct Observation {
    at: Instant,
    generation: Option<i64>,
    /// A reconcile was asked for and has not observed yet.
    requested: bool,
}

/// The last observation of each resource that is polled, by UID.
#[derive(Debug)]
pub struct Observations {
    interval: Duration,
    entries: Mutex<HashMap<String, Observation>>,
}

impl Observations {
    /// Observations repeated every `interval`.
    pub fn new(interval: Duration) -> Self {
        Observations {
            interval,
            entries: Mutex::default(),
        }
    }

    /// How often due polls are looked for.
    fn scan_every(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(50), SCAN_EVERY)
    }

    /// Records an observation now: the next one is due after the interval.
    pub fn observed_now(&self, uid: &str, generation: Option<i64>) {
        let entry = Observation {
            at: Instant::now(),
            generation,
            requested: false,
        };
        self.entries
            .lock()
            .expect("observations")
            .insert(uid.to_string(), entry);
    }

    /// How long until the next observation is due, when the last one (at the same generation)
    /// is more recent than the interval; None when one is due now.
    pub fn next_in(&self, uid: &str, generation: Option<i64>) -> Option<Duration> {
        let entries = self.entries.lock().expect("observations");
        let last = entries.get(uid)?;
        let age = last.at.elapsed();
        (last.generation == generation && age < self.interval).then(|| self.interval - age)
    }

    /// Stops polling a resource.
    pub fn forget(&self, uid: &str) {
        self.entries.lock().expect("observations").remove(uid);
    }

    /// The cached resources whose observation is due and not yet asked for; marks them asked.
    fn take_due(&self, store: &Store<RemoteAssistance>, now: Instant) -> Vec<ObjectRef<RemoteAssistance>> {
        let due = |o: &Observation| !o.requested && now.duration_since(o.at) >= self.interval;
        if !self.entries.lock().expect("observations").values().any(due) {
            return Vec::new();
        }
        let cached = store.state();
        let mut entries = self.entries.lock().expect("observations");
        cached
            .iter()
            .filter(|ra| ra.metadata.deletion_timestamp.is_none())
            .filter_map(|ra| {
                let entry = entries.get_mut(ra.metadata.uid.as_deref()?)?;
                due(entry).then(|| {
                    entry.requested = true;
                    ObjectRef::from_obj(&**ra)
                })
            })
            .collect()
    }

    /// Drops the entries of resources that are no longer cached (gone without a last reconcile).
    fn sweep(&self, store: &Store<RemoteAssistance>) {
        let cached = store.state();
        let uids: HashSet<String> = cached.iter().filter_map(|ra| ra.uid()).collect();
        self.entries
            .lock()
            .expect("observations")
            .retain(|uid, _| uids.contains(uid));
    }
}

/// The resources whose poll is due, as they fall due (for `Controller::reconcile_on`).
pub fn due(
    observations: std::sync::Arc<Observations>,
    store: Store<RemoteAssistance>,
) -> impl Stream<Item = ObjectRef<RemoteAssistance>> + Send + 'static {
    use futures::StreamExt;
    futures::stream::unfold(0u64, move |scan| {
        let (observations, store) = (observations.clone(), store.clone());
        async move {
            tokio::time::sleep(observations.scan_every()).await;
            if scan % SWEEP_EVERY_SCANS == SWEEP_EVERY_SCANS - 1 {
                observations.sweep(&store);
            }
            Some((
                futures::stream::iter(observations.take_due(&store, Instant::now())),
                scan + 1,
            ))
        }
    })
    .flatten()
}

impl crate::controller::context::PerObjectStore for Observations {
    fn forget(&self, uid: &str) {
        Observations::forget(self, uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        self.entries
            .lock()
            .expect("observations")
            .retain(|uid, _| exists(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn resource(name: &str, uid: &str) -> RemoteAssistance {
        let mut ra = crate::resource::sample(name);
        ra.spec.desktop_id = name.into();
        ra.metadata.namespace = Some("ns".into());
        ra.metadata.uid = Some(uid.into());
        ra
    }

    fn store_of(resources: Vec<RemoteAssistance>) -> Store<RemoteAssistance> {
        let mut writer = Writer::default();
        writer.apply_watcher_event(&Event::Init);
        for ra in resources {
            writer.apply_watcher_event(&Event::InitApply(ra));
        }
        writer.apply_watcher_event(&Event::InitDone);
        writer.as_reader()
    }

    #[test]
    fn a_due_poll_is_asked_for_once_until_observed_again() {
        let interval = Duration::from_secs(300);
        let o = Observations::new(interval);
        let store = store_of(vec![resource("a", "uid-a"), resource("b", "uid-b")]);
        o.observed_now("uid-a", Some(1));
        let now = Instant::now();
        assert!(o.take_due(&store, now).is_empty(), "not due yet");
        assert_eq!(
            o.next_in("uid-a", Some(1)).map(|d| d > Duration::from_secs(290)),
            Some(true)
        );
        assert_eq!(
            o.next_in("uid-a", Some(2)),
            None,
            "a new generation is observed at once"
        );
        let later = now + interval;
        let due = o.take_due(&store, later);
        assert_eq!(
            due.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a"],
            "only the polled resource"
        );
        assert!(
            o.take_due(&store, later + SCAN_EVERY).is_empty(),
            "asked for once"
        );
        o.observed_now("uid-a", Some(1));
        assert!(
            o.take_due(&store, Instant::now() + interval).len() == 1,
            "due again after the next observation"
        );
    }

    #[test]
    fn entries_of_resources_gone_from_the_cache_are_swept() {
        let o = Observations::new(Duration::from_secs(300));
        o.observed_now("uid-a", None);
        o.observed_now("uid-gone", None);
        o.sweep(&store_of(vec![resource("a", "uid-a")]));
        assert_eq!(o.entries.lock().unwrap().len(), 1);
        o.forget("uid-a");
        assert!(o.entries.lock().unwrap().is_empty());
    }
}
