//! The credentials Secrets as the watch reports them: the latest resourceVersion of each and
//! whether it carries the operator's pin. The watch carries metadata only (never data).
//!
//! Invariants: a Secret is indexed only while some RemoteAssistance names it (or it is the
//! default credentials), so the index is bounded by the Secrets in use, not by every Secret of
//! the cluster; a version that is not the latest known is never trusted as current (reads then
//! go to the API server). Speed only: a Secret missing from the index is read, not guessed.

use std::collections::HashMap;
use std::sync::Mutex;

/// `(namespace, name)` of a Secret.
pub type SecretKey = (String, String);

/// What the watch last said about one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    version: String,
    pinned: bool,
}

/// The index of the credentials Secrets in use.
#[derive(Debug, Default)]
pub struct SecretIndex {
    seen: Mutex<HashMap<SecretKey, Seen>>,
}

impl SecretIndex {
    /// Records a version of a Secret in use; returns whether it differs from the one recorded.
    pub fn observe(&self, key: &SecretKey, version: &str, pinned: bool) -> bool {
        let seen = Seen {
            version: version.to_string(),
            pinned,
        };
        self.seen
            .lock()
            .expect("secret index")
            .insert(key.clone(), seen)
            .is_none_or(|old| old.version != version)
    }

    /// Whether the Secret is indexed: a reconcile read it, or looked for it and found none
    /// ([`SecretIndex::awaited`]).
    pub fn contains(&self, key: &SecretKey) -> bool {
        self.seen.lock().expect("secret index").contains_key(key)
    }

    /// Records that a reconcile looked for a Secret that does not exist (yet): its creation
    /// then re-drives the resources that name it, and counts as a new version.
    pub fn awaited(&self, key: &SecretKey) {
        let absent = Seen {
            version: String::new(),
            pinned: false,
        };
        self.seen
            .lock()
            .expect("secret index")
            .entry(key.clone())
            .or_insert(absent);
    }

    /// Forgets a Secret (no resource uses it, or it is gone).
    pub fn forget(&self, key: &SecretKey) {
        self.seen.lock().expect("secret index").remove(key);
    }

    /// The latest version the watch reported.
    pub fn latest(&self, key: &SecretKey) -> Option<String> {
        self.seen
            .lock()
            .expect("secret index")
            .get(key)
            .map(|s| s.version.clone())
    }

    /// Whether the watch says the Secret carries no pin (so releasing it needs no API call).
    /// Unknown Secrets count as possibly pinned.
    pub fn known_unpinned(&self, key: &SecretKey) -> bool {
        self.seen
            .lock()
            .expect("secret index")
            .get(key)
            .is_some_and(|s| !s.pinned)
    }

    /// Keeps only the Secrets for which `in_use` holds.
    pub fn retain(&self, in_use: impl Fn(&SecretKey) -> bool) {
        self.seen.lock().expect("secret index").retain(|k, _| in_use(k));
    }

    /// How many Secrets are indexed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.lock().expect("secret index").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        ("ns".into(), name.into())
    }

    #[test]
    fn versions_pins_and_pruning() {
        let index = SecretIndex::default();
        assert!(index.observe(&key("a"), "1", false), "new");
        assert!(
            !index.observe(&key("a"), "1", false),
            "a re-list of the same version changes nothing"
        );
        assert!(index.known_unpinned(&key("a")));
        assert!(index.observe(&key("a"), "2", true));
        assert!(!index.known_unpinned(&key("a")) && !index.known_unpinned(&key("unknown")));
        for i in 0..50 {
            index.observe(&key(&format!("s{i}")), "1", false);
        }
        index.retain(|k| k.1 == "a");
        assert_eq!(index.len(), 1, "only Secrets in use stay");
        assert_eq!(index.latest(&key("a")).as_deref(), Some("2"));
    }
}
