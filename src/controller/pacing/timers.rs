//! One ordered queue of the wall-clock times at which a resource must be looked at again: a
//! held session's deadline, a finished object's TTL. A scan every second asks for the
//! reconciles that are due; when nothing is due it looks at the queue's first entry only, so
//! that idle cost does not grow with the number of resources.
//!
//! The queue is a speed-up, not the truth: every reconcile recomputes the time from the spec,
//! the status and the cloud's times ([`crate::controller::reconcile::deadline`]) and sets it again, so a restart
//! rebuilds it from the initial reconciles (acting at once on times that passed meanwhile).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::resource::RemoteAssistance;

/// How often due entries are looked for (an entry fires at most this late).
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    /// uid → (when, the object).
    entries: HashMap<String, (Timestamp, ObjectRef<RemoteAssistance>)>,
    /// (when, uid), ordered by time.
    order: BTreeSet<(Timestamp, String)>,
}

/// The times at which resources are due, one per resource (its earliest).
#[derive(Default)]
pub struct Timers {
    queue: Mutex<Queue>,
}

impl Timers {
    /// Sets the time `uid` (the object `object`) is due, replacing any earlier setting.
    pub fn set(&self, uid: &str, object: ObjectRef<RemoteAssistance>, at: Timestamp) {
        let mut q = self.queue.lock().expect("timers");
        if let Some((old, _)) = q.entries.insert(uid.to_string(), (at, object)) {
            q.order.remove(&(old, uid.to_string()));
        }
        q.order.insert((at, uid.to_string()));
    }

    /// Removes the time of `uid`.
    pub fn clear(&self, uid: &str) {
        let mut q = self.queue.lock().expect("timers");
        if let Some((at, _)) = q.entries.remove(uid) {
            q.order.remove(&(at, uid.to_string()));
        }
    }

    /// How many resources have a time set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.lock().expect("timers").entries.len()
    }

    /// Keeps only the entries of UIDs for which `keep` holds (objects gone are dropped).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut q = self.queue.lock().expect("timers");
        let Queue { entries, order } = &mut *q;
        entries.retain(|uid, _| keep(uid));
        order.retain(|(_, uid)| entries.contains_key(uid));
    }

    /// Removes and returns the objects due at `now`.
    pub fn take_due(&self, now: Timestamp) -> Vec<ObjectRef<RemoteAssistance>> {
        let mut q = self.queue.lock().expect("timers");
        let mut due = Vec::new();
        while q.order.first().is_some_and(|(at, _)| *at <= now) {
            let (_, uid) = q.order.pop_first().expect("checked");
            if let Some((_, object)) = q.entries.remove(&uid) {
                due.push(object);
            }
        }
        due
    }
}

/// The objects whose time has come, as it comes (for `Controller::reconcile_on`).
pub fn due(
    timers: std::sync::Arc<Timers>,
) -> impl Stream<Item = ObjectRef<RemoteAssistance>> + Send + 'static {
    use futures::StreamExt;
    futures::stream::unfold(timers, |timers| async move {
        tokio::time::sleep(SCAN_EVERY).await;
        let due = timers.take_due(Timestamp::now());
        Some((futures::stream::iter(due), timers))
    })
    .flatten()
}

impl crate::controller::context::PerObjectStore for Timers {
    fn forget(&self, uid: &str) {
        Timers::retain(self, |other| other != uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        Timers::retain(self, exists);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectRef<RemoteAssistance> {
        ObjectRef::new(name).within("ns")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn entries_fire_in_time_order_once_and_can_move() {
        let t = Timers::default();
        t.set("a", object("a"), ts("2026-11-29T10:00:00Z"));
        t.set("b", object("b"), ts("2026-11-29T09:00:00Z"));
        t.set("c", object("c"), ts("2026-11-29T11:00:00Z"));
        t.set("c", object("c"), ts("2026-11-29T09:30:00Z"));
        assert_eq!(t.len(), 3, "one entry per resource");
        let names = |v: Vec<ObjectRef<RemoteAssistance>>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(
            names(t.take_due(ts("2026-11-29T08:00:00Z"))),
            Vec::<String>::new()
        );
        assert_eq!(names(t.take_due(ts("2026-11-29T09:45:00Z"))), vec!["b", "c"]);
        assert_eq!(
            names(t.take_due(ts("2026-11-29T09:45:00Z"))),
            Vec::<String>::new(),
            "fired once"
        );
        t.clear("a");
        assert_eq!(t.len(), 0);
        t.set("gone", object("gone"), ts("2026-11-29T10:00:00Z"));
        t.set("here", object("here"), ts("2026-11-29T10:00:00Z"));
        t.retain(|uid| uid == "here");
        assert_eq!(
            names(t.take_due(ts("2026-11-29T12:00:00Z"))),
            vec!["here"],
            "entries of objects gone are dropped"
        );
    }
}
