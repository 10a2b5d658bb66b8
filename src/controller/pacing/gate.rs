//! Per-object pacing of cloud calls: exponential backoff with jitter after passing failures, a
//! slow recheck after failures that need a person, and an immediate retry when something that
//! could fix the failure changed (the spec, a deletion, the credentials Secret, the retry
//! annotation).
//!
//! Watch events alone must not drive cloud calls: the operator's own status writes markers
//! reconciles too, and without this gate every failed call would be retried at once.
//!
//! Early re-drives are paced too ([`BackoffPolicy::early_spacing`]): the first change after a
//! failure goes at once (a person fixing something sees it tried), each further one only after
//! a spacing that doubles, so an object whose spec, annotations or Secret change every second
//! makes at most the calls its backoff allows. A change towards ending access (a deletion, a
//! spec cancel, a deadline that passed) always goes at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The markers of an object that, when one changes, may fix a failure (a spec change, a
/// deletion, the retry, paused and deletion-policy annotations): recorded with each failure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeMarkers {
    /// metadata.generation (spec changes).
    pub generation: Option<i64>,
    /// Whether deletion was requested.
    pub deleting: bool,
    /// Value of the retry annotation.
    pub retry_token: Option<String>,
    /// Whether the paused annotation is set.
    pub paused: bool,
    /// Value of the deletion-policy annotation (a person choosing Orphan for a deletion the
    /// cloud refuses to confirm).
    pub deletion_policy: Option<String>,
    /// Whether the object asks for its access to end (a deletion, `spec.cancelled`, a deadline
    /// that passed): such a change opens the gate at once.
    pub ends_access: bool,
}

impl ChangeMarkers {
    /// The markers of an object as it is now (`paused`: whether the paused annotation is set).
    pub fn of(ra: &crate::resource::RemoteAssistance, paused: bool) -> ChangeMarkers {
        use kube::ResourceExt;
        ChangeMarkers {
            generation: ra.metadata.generation,
            deleting: ra.metadata.deletion_timestamp.is_some(),
            retry_token: ra.annotations().get(crate::resource::RETRY_ANNOTATION).cloned(),
            paused,
            deletion_policy: ra
                .annotations()
                .get(crate::resource::DELETION_POLICY_ANNOTATION)
                .cloned(),
            ends_access: super::fair::ends_access(ra, jiff::Timestamp::now()),
        }
    }
}

/// Longest wait between retries of a failure to talk to the Kubernetes API.
pub const API_RETRY_MAX: Duration = Duration::from_secs(10);

/// How long to wait after a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// First retry after a passing failure.
    pub base: Duration,
    /// Longest wait between retries of passing failures.
    pub max: Duration,
    /// Wait before rechecking a failure that needs a person.
    pub needs_human_recheck: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            needs_human_recheck: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    /// The wait before attempt `failures + 1` of a passing failure: `base * 2^(failures-1)`,
    /// capped at `max`, with "equal jitter" (between half and all of it) from `jitter` in [0, 1).
    pub fn retry_delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// How long after a failed attempt a change of the object (or its Secret) may re-drive it,
    /// when `early` changes re-drove it since its last success: at once for the first, then
    /// `base`, doubling, at most `max`.
    pub fn early_spacing(&self, early: u32) -> Duration {
        match early {
            0 => Duration::ZERO,
            n => self.base.saturating_mul(1u32 << (n - 1).min(30)).min(self.max),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    not_before: Instant,
    markers: ChangeMarkers,
    /// Fingerprint of the credentials Secret's data when the failure happened.
    credentials: Option<u64>,
    /// The watch saw the credentials Secret change since (its data may not have).
    secret_changed: bool,
    /// Attempts re-driven early by a change since the last success.
    early: u32,
    /// When a change may re-drive the next attempt early ([`BackoffPolicy::early_spacing`]).
    early_from: Instant,
}

/// What the gate says about a cloud call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Open,
    /// Wait this long (unless something relevant changes first).
    Closed(Duration),
    /// Closed for this long, but the credentials Secret changed since the failure: open only
    /// if its data differs from the fingerprint recorded then (the operator's own metadata
    /// writes, such as its pin, change the Secret's version but not its data).
    SecretChanged {
        /// The wait if the data is the same.
        wait: Duration,
        /// The fingerprint recorded with the failure.
        recorded: Option<u64>,
    },
}

/// The gates of all objects, keyed by UID.
#[derive(Debug, Default)]
pub struct Gates {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Gates {
    /// Whether a cloud call may be made now for `uid`; if not, how long until it may.
    pub fn check(&self, uid: &str, markers: &ChangeMarkers, now: Instant) -> Gate {
        let entries = self.entries.lock().expect("gates");
        let Some(entry) = entries.get(uid) else {
            return Gate::Open;
        };
        if now >= entry.not_before || (markers.ends_access && !entry.markers.ends_access) {
            return Gate::Open;
        }
        let wait = entry.not_before - now;
        if &entry.markers != markers || entry.secret_changed {
            // A change may re-drive early, once its spacing has passed.
            if now < entry.early_from {
                return Gate::Closed(wait.min(entry.early_from - now));
            }
            if &entry.markers != markers {
                return Gate::Open;
            }
        }
        if entry.secret_changed {
            return Gate::SecretChanged {
                wait,
                recorded: entry.credentials,
            };
        }
        Gate::Closed(wait)
    }

    /// Records a failure and returns how long to wait before the next attempt. `credentials` is
    /// the fingerprint of the credentials Secret's data at the time.
    pub fn failed(
        &self,
        uid: &str,
        markers: ChangeMarkers,
        credentials: Option<u64>,
        needs_human: bool,
        policy: &BackoffPolicy,
        now: Instant,
    ) -> Duration {
        let mut entries = self.entries.lock().expect("gates");
        let previous = entries.get(uid);
        let failures = previous.map_or(0, |e| e.failures) + 1;
        // A Secret change seen while the attempt ran still counts: its reconcile comes after
        // this one and must compare the data.
        let secret_changed = previous.is_some_and(|e| e.secret_changed);
        // This attempt came early if it ran before its backoff was over (a change re-drove it).
        let early = previous.map_or(0, |e| e.early + u32::from(now < e.not_before));
        let delay = if needs_human {
            policy.needs_human_recheck
        } else {
            policy.retry_delay(failures, rand::random::<f64>())
        };
        entries.insert(
            uid.to_string(),
            Entry {
                failures,
                not_before: now + delay,
                markers,
                credentials,
                secret_changed,
                early,
                early_from: now + policy.early_spacing(early),
            },
        );
        delay
    }

    /// Forgets failures after a success.
    pub fn succeeded(&self, uid: &str) {
        self.entries.lock().expect("gates").remove(uid);
    }

    /// Notes that the credentials Secret of `uid` changed (see [`Gate::SecretChanged`]). Noted
    /// also when no failure is recorded yet: an attempt running now may fail with the old
    /// data, and the reconcile this change queues must then compare the data, not wait out the
    /// failure's recheck.
    pub fn secret_changed(&self, uid: &str) {
        let mut entries = self.entries.lock().expect("gates");
        match entries.get_mut(uid) {
            Some(e) => e.secret_changed = true,
            None => {
                let now = Instant::now();
                let open = Entry {
                    failures: 0,
                    not_before: now,
                    markers: ChangeMarkers::default(),
                    credentials: None,
                    secret_changed: true,
                    early: 0,
                    early_from: now,
                };
                entries.insert(uid.to_string(), open);
            }
        }
    }

    /// The change of the credentials Secret left its data as it was: keep waiting.
    pub fn secret_unchanged(&self, uid: &str) {
        if let Some(e) = self.entries.lock().expect("gates").get_mut(uid) {
            e.secret_changed = false;
        }
    }

    /// Consecutive failures recorded for `uid`.
    #[cfg(test)]
    pub fn failures(&self, uid: &str) -> u32 {
        self.entries
            .lock()
            .expect("gates")
            .get(uid)
            .map_or(0, |e| e.failures)
    }

    /// Drops the entry of an object that is gone.
    pub fn forget(&self, uid: &str) {
        self.succeeded(uid);
    }

    /// Keeps only the entries of objects for which `exists` holds (an object can go without a
    /// last reconcile: its finalizer removed by hand, its namespace gone).
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.entries.lock().expect("gates").retain(|uid, _| exists(uid));
    }
}

impl crate::controller::context::PerObjectStore for Gates {
    fn forget(&self, uid: &str) {
        Gates::forget(self, uid);
    }
    fn retain(&self, exists: &dyn Fn(&str) -> bool) {
        Gates::retain(self, exists);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_with_equal_jitter_and_cap() {
        let p = BackoffPolicy::default();
        assert_eq!(p.retry_delay(1, 0.999_999).as_millis(), 999);
        assert_eq!(p.retry_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.retry_delay(4, 0.0), Duration::from_secs(4));
        assert_eq!(p.retry_delay(20, 0.0), Duration::from_secs(150));
        assert!(p.retry_delay(u32::MAX, 1.0) <= Duration::from_secs(300));
    }

    #[test]
    fn gate_waits_until_time_or_markers_change() {
        let g = Gates::default();
        let p = BackoffPolicy::default();
        let t0 = Instant::now();
        let trig = ChangeMarkers {
            generation: Some(1),
            deleting: true,
            retry_token: None,
            paused: false,
            deletion_policy: None,
            ends_access: true,
        };
        assert_eq!(g.check("u", &trig, t0), Gate::Open, "no failure yet");
        let d = g.failed("u", trig.clone(), Some(7), false, &p, t0);
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
        assert!(
            matches!(g.check("u", &trig, t0), Gate::Closed(_)),
            "held after a failure"
        );
        assert_eq!(
            g.check("u", &trig, t0 + d),
            Gate::Open,
            "released when the time comes"
        );
        let changed = ChangeMarkers {
            generation: Some(2),
            ..trig.clone()
        };
        assert_eq!(
            g.check("u", &changed, t0),
            Gate::Open,
            "released by a spec change"
        );

        let d = g.failed("u", trig.clone(), Some(7), true, &p, t0);
        assert_eq!(d, p.needs_human_recheck);
        assert_eq!(g.failures("u"), 2);
        g.secret_changed("u");
        let spaced = t0 + p.early_spacing(1);
        assert_eq!(
            g.check("u", &trig, spaced),
            Gate::SecretChanged {
                wait: d - p.early_spacing(1),
                recorded: Some(7)
            },
            "the caller compares the data"
        );
        g.secret_unchanged("u");
        assert_eq!(
            g.check("u", &trig, spaced),
            Gate::Closed(d - p.early_spacing(1)),
            "same data: still held"
        );
        g.succeeded("u");
        assert_eq!(g.failures("u"), 0);

        // A Secret change seen while an attempt was running (its failure is recorded after the
        // change) is not lost: the next reconcile compares the data.
        g.failed("u", trig.clone(), Some(7), true, &p, t0);
        g.secret_changed("u");
        g.failed("u", trig.clone(), Some(7), true, &p, t0);
        assert!(
            matches!(
                g.check("u", &trig, t0 + p.early_spacing(1)),
                Gate::SecretChanged {
                    recorded: Some(7),
                    ..
                }
            ),
            "the change survives the failure recorded after it"
        );

        // A change seen while the first attempt runs (nothing recorded yet) counts too.
        let g = Gates::default();
        g.secret_changed("first");
        assert_eq!(
            g.check("first", &trig, t0 + Duration::from_millis(1)),
            Gate::Open,
            "nothing to wait for yet"
        );
        g.failed("first", trig.clone(), Some(7), true, &p, t0);
        assert!(matches!(
            g.check("first", &trig, t0 + p.early_spacing(1)),
            Gate::SecretChanged {
                recorded: Some(7),
                ..
            }
        ));
        assert_eq!(g.failures("first"), 1);
        g.succeeded("u");

        g.failed("gone", trig.clone(), None, true, &p, t0);
        g.failed("here", trig.clone(), None, true, &p, t0);
        g.retain(|uid| uid == "here");
        assert_eq!(
            (g.failures("gone"), g.failures("here")),
            (0, 1),
            "entries of objects that are gone are swept"
        );
    }

    #[test]
    fn churn_re_drives_at_once_once_then_at_doubling_spacing() {
        let g = Gates::default();
        let p = BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            needs_human_recheck: Duration::from_secs(300),
        };
        let t0 = Instant::now();
        let markers = |token: u64| ChangeMarkers {
            generation: Some(1),
            retry_token: Some(token.to_string()),
            ..ChangeMarkers::default()
        };
        // A Stalled object whose retry annotation changes every 100 ms for 60 s: every attempt
        // fails and needs a person.
        let mut attempts = Vec::new();
        for tick in 0..600u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            if g.check("u", &markers(tick), now) == Gate::Open {
                attempts.push(tick);
                g.failed("u", markers(tick), None, true, &p, now);
            }
        }
        // At 0, then 1 s, 2 s, 4 s, 8 s, 16 s after each previous attempt: 0, 1, 3, 7, 15, 31 s.
        assert_eq!(attempts, [0, 1, 11, 31, 71, 151, 311], "ticks of 100 ms");
        // A deletion is never held back by the pacing of changes.
        let deleting = ChangeMarkers {
            deleting: true,
            ends_access: true,
            ..markers(600)
        };
        assert_eq!(g.check("u", &deleting, t0 + Duration::from_secs(60)), Gate::Open);
    }
}
