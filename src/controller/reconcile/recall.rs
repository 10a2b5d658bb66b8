//! What this process knows that its cache may not show yet: the memory that bridges a write
//! (to the cloud or to status) and the watch event that reports it.
//!
//! Invariants (correctness, not speed):
//! - A cancel the cloud confirmed is remembered for [`CANCEL_MEMORY`], so that a reconcile of an
//!   object whose status does not say `Cancelled` yet (the write failed, or is still on its way)
//!   neither cancels twice nor loses that the finalizer may come off.
//! - The resourceVersion of this process's last status write of an object is remembered until
//!   the cache has caught up with it, or [`OWN_WRITE_WAIT`] passed: a reconcile of an older
//!   cached copy would repeat work the write already recorded.
//!
//! Both maps are pruned as they are written: entries older than their window go.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::resource::RemoteAssistance;

/// How long a confirmed cancel is remembered (beyond that, status records it, or the object is
/// long gone).
pub const CANCEL_MEMORY: Duration = Duration::from_secs(600);

/// Longest a reconcile waits for the cache to catch up with this process's own status write.
pub const OWN_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Confirmed cancels and own status writes, by object UID.
#[derive(Debug, Default)]
pub struct Recall {
    cancels: Mutex<HashMap<String, Instant>>,
    own_writes: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Recall {
    /// Remembers that the cloud confirmed this object's cancel.
    pub fn confirm_cancelled(&self, uid: &str) {
        let now = Instant::now();
        let mut cancels = self.cancels.lock().expect("recall");
        cancels.retain(|_, at| now.duration_since(*at) < CANCEL_MEMORY);
        cancels.insert(uid.to_string(), now);
    }

    /// Whether this process saw the cloud confirm this object's cancel.
    pub fn was_cancelled(&self, uid: &str) -> bool {
        self.cancels.lock().expect("recall").contains_key(uid)
    }

    /// Forgets a confirmed cancel once the status records it.
    pub fn forget_cancel(&self, uid: &str) {
        self.cancels.lock().expect("recall").remove(uid);
    }

    /// Records the resourceVersion of a status write of this process.
    pub fn wrote(&self, uid: &str, resource_version: &str) {
        let Ok(version) = resource_version.parse::<u64>() else {
            return;
        };
        let now = Instant::now();
        let mut writes = self.own_writes.lock().expect("recall");
        writes.retain(|_, (_, at)| now.duration_since(*at) < OWN_WRITE_WAIT);
        writes.insert(uid.to_string(), (version, now));
    }

    /// Whether the cached object predates this process's last status write of it (made less
    /// than [`OWN_WRITE_WAIT`] ago). The resourceVersions of one etcd are increasing integers;
    /// anything else never counts as older. The record goes once the cache has caught up or
    /// the wait is over, so a store restored from backup cannot hold an object back.
    pub fn is_older_than_own_write(&self, ra: &RemoteAssistance) -> bool {
        let Some(version) = ra.resource_version().and_then(|v| v.parse::<u64>().ok()) else {
            return false;
        };
        let uid = ra.uid().unwrap_or_default();
        let mut writes = self.own_writes.lock().expect("recall");
        match writes.get(&uid) {
            Some((written, at)) if version < *written && at.elapsed() < OWN_WRITE_WAIT => true,
            Some(_) => {
                writes.remove(&uid);
                false
            }
            None => false,
        }
    }

    /// Forgets the own writes of an object that is gone (its confirmed cancel stays for
    /// [`CANCEL_MEMORY`]: the cache may still hold the object and queue one more reconcile).
    pub fn forget(&self, uid: &str) {
        self.own_writes.lock().expect("recall").remove(uid);
    }

    /// How many entries both maps hold.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cancels.lock().expect("recall").len() + self.own_writes.lock().expect("recall").len()
    }

    #[cfg(test)]
    fn age(&self, by: Duration) {
        for at in self.cancels.lock().unwrap().values_mut() {
            *at -= by;
        }
        for (_, at) in self.own_writes.lock().unwrap().values_mut() {
            *at -= by;
        }
    }
}

/// A confirmed cancel is kept for [`CANCEL_MEMORY`] even after its object is gone (the cache may
/// still show the object): neither call drops it; only time does.
impl crate::controller::context::PerObjectStore for Recall {
    fn forget(&self, uid: &str) {
        Recall::forget(self, uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        self.own_writes
            .lock()
            .expect("recall")
            .retain(|uid, _| exists(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(uid: &str, version: &str) -> RemoteAssistance {
        let mut ra = crate::resource::sample("x");
        ra.metadata.uid = Some(uid.into());
        ra.metadata.resource_version = Some(version.into());
        ra
    }

    #[test]
    fn a_cached_copy_older_than_an_own_write_waits_until_it_catches_up() {
        let r = Recall::default();
        r.wrote("u", "10");
        assert!(r.is_older_than_own_write(&object("u", "9")));
        assert!(!r.is_older_than_own_write(&object("u", "10")), "caught up");
        assert!(
            !r.is_older_than_own_write(&object("u", "9")),
            "the record went when the cache caught up"
        );
        r.wrote("u", "12");
        r.age(OWN_WRITE_WAIT);
        assert!(
            !r.is_older_than_own_write(&object("u", "11")),
            "not held back past the wait"
        );
    }

    #[test]
    fn both_maps_are_pruned_as_they_are_written() {
        let r = Recall::default();
        for i in 0..100 {
            r.confirm_cancelled(&format!("c{i}"));
            r.wrote(&format!("w{i}"), "5");
        }
        assert_eq!(r.len(), 200);
        r.age(CANCEL_MEMORY);
        r.confirm_cancelled("new");
        r.wrote("new", "6");
        assert_eq!(r.len(), 2, "entries older than their window went");
        assert!(r.was_cancelled("new") && !r.was_cancelled("c1"));
    }
}
