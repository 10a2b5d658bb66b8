//! Pacing per credential: a circuit breaker keyed by the credential (an access key, an IAM user,
//! a token), shared by every resource that uses it.
//!
//! The gateway locks an AK/SK for 5 minutes after 5 failed authentications, and IAM locks a
//! user after repeated wrong passwords. Per-object backoff does not prevent that: fifty resources
//! on one wrong key make fifty failed calls at once, and fifty more at every recheck, so the key
//! never unlocks. Here:
//! - a credential that has not yet been answered goes out **once**: the first call is a probe,
//!   and concurrent callers wait for its answer;
//! - after an authentication failure, the credential is *tripped* for the lock window: calls are
//!   withheld (they fail with [`CloudError::Withheld`], classified as the failure they avoid),
//!   except one probe when the window is over;
//! - any other answer (a success, or a failure that is not about authentication) trusts it again.
//!
//! Invariant: for one key, at most one call is in flight while it is untested or tripped.
//! Memory is bounded: trusted entries are pruned when unused for [`IDLE_PRUNE`], tripped ones
//! once their window is over and they went unused for another window, and at most
//! [`MAX_UNTRUSTED`] are kept (each change of a Secret's data is a new key, so a loop of wrong
//! keys would otherwise grow without end): the least recently used tripped entry makes room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::workspace::{CloudError, Credentials, Disposition, HumanReason, Operation, PasswordLogin};

/// A trusted entry not used for this long is forgotten.
pub const IDLE_PRUNE: Duration = Duration::from_secs(3600);

/// Most entries kept that are not trusted (tripped, or probing). Evicting a tripped entry early
/// costs at most one more failed call with that key, if it is ever used again.
pub const MAX_UNTRUSTED: usize = 1024;

/// Names a credential without holding its secret: the access key ID (or a login's user) and a
/// digest of the secret parts, so that a corrected secret is a new key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CredentialKey(String);

impl CredentialKey {
    /// The key of credentials sent as they are.
    pub fn of(credentials: &Credentials) -> CredentialKey {
        match credentials {
            Credentials::AkSk {
                access_key_id,
                secret_access_key,
                security_token,
            } => CredentialKey(format!(
                "ak:{access_key_id}:{}",
                digest(&[
                    secret_access_key.expose(),
                    security_token.as_ref().map_or("", |t| t.expose())
                ])
            )),
            Credentials::Token(token) => CredentialKey(format!("token:{}", digest(&[token.expose()]))),
        }
    }

    /// The key of an IAM password login.
    pub fn of_login(login: &PasswordLogin) -> CredentialKey {
        CredentialKey(format!(
            "iam:{}:{}/{}:{}",
            login.iam_endpoint,
            login.domain_name,
            login.username,
            digest(&[login.password.expose()])
        ))
    }
}

fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Whether a call may go out.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; report the outcome with [`Breakers::record`].
    Go,
    /// Wait for the probe in flight, then ask again.
    Wait(Arc<Notify>),
    /// Do not call: the credential failed to authenticate recently.
    Withhold(CloudError),
}

#[derive(Debug)]
enum State {
    /// Answered without an authentication failure.
    Trusted,
    /// A probe is in flight (first use, or the end of a lock window); others wait on it.
    Probing {
        done: Arc<Notify>,
        after_failure: Option<(CloudError, Instant)>,
    },
    /// Refused recently: no call until `until`.
    Tripped { cause: CloudError, until: Instant },
}

#[derive(Debug)]
struct Entry {
    state: State,
    used: Instant,
}

/// The breakers of every credential in use.
#[derive(Debug)]
pub struct Breakers {
    window: Duration,
    entries: Mutex<HashMap<CredentialKey, Entry>>,
}

impl Breakers {
    /// Breakers that hold a failed credential back for `window` (the gateway's lock time).
    pub fn new(window: Duration) -> Breakers {
        Breakers {
            window,
            entries: Mutex::default(),
        }
    }

    /// Whether a call with `key` may go out now.
    pub fn admit(&self, key: &CredentialKey, operation: Operation, now: Instant) -> Admission {
        let mut entries = self.entries.lock().expect("breakers");
        if entries.len() > 64 {
            self.prune(&mut entries, now);
        }
        let Some(entry) = entries.get_mut(key) else {
            // First use: this call is the probe.
            make_room_for_untrusted(&mut entries);
            let state = State::Probing {
                done: Arc::new(Notify::new()),
                after_failure: None,
            };
            entries.insert(key.clone(), Entry { state, used: now });
            return Admission::Go;
        };
        entry.used = now;
        match &entry.state {
            State::Trusted => Admission::Go,
            State::Probing {
                done,
                after_failure: None,
            } => Admission::Wait(done.clone()),
            State::Probing {
                after_failure: Some((cause, until)),
                ..
            } => Admission::Withhold(self.withheld(operation, cause, *until, now)),
            State::Tripped { cause, until } if now < *until => {
                Admission::Withhold(self.withheld(operation, cause, *until, now))
            }
            State::Tripped { cause, until } => {
                let after_failure = Some((cause.clone(), *until));
                entry.state = State::Probing {
                    done: Arc::new(Notify::new()),
                    after_failure,
                };
                Admission::Go
            }
        }
    }

    fn withheld(&self, operation: Operation, cause: &CloudError, until: Instant, now: Instant) -> CloudError {
        let next = until.saturating_duration_since(now).as_secs();
        CloudError::Withheld {
            operation,
            why: format!(
                "these credentials failed to authenticate; to keep the gateway from locking them, one call per {}s goes out with them (next in {next}s or when the Secret changes)",
                self.window.as_secs()
            ),
            cause: Box::new(cause.clone()),
        }
    }

    /// Records the answer to a call that [`Breakers::admit`] let go.
    pub fn record(&self, key: &CredentialKey, outcome: Result<(), &CloudError>, now: Instant) {
        let mut entries = self.entries.lock().expect("breakers");
        let unauthenticated = outcome.err().filter(|e| is_authentication_failure(e));
        let Some(entry) = entries.get_mut(key) else { return };
        let next = match unauthenticated {
            Some(cause) => State::Tripped {
                cause: cause.clone(),
                until: now + self.window,
            },
            None => State::Trusted,
        };
        if let State::Probing { done, .. } = std::mem::replace(&mut entry.state, next) {
            done.notify_waiters();
        }
        entry.used = now;
    }

    /// Forgets a probe that never got an answer (the call was cancelled): the next caller probes.
    pub fn abandon(&self, key: &CredentialKey) {
        let mut entries = self.entries.lock().expect("breakers");
        if let Some(entry) = entries.get_mut(key)
            && let State::Probing { done, after_failure } = &entry.state
        {
            done.notify_waiters();
            entry.state = match after_failure {
                Some((cause, until)) => State::Tripped {
                    cause: cause.clone(),
                    until: *until,
                },
                None => {
                    entries.remove(key);
                    return;
                }
            };
        }
    }

    /// How many credentials are tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().expect("breakers").len()
    }

    /// Drops what is no longer needed (see the module's invariant) and reports how many
    /// credentials are tracked, trusted and not.
    pub fn prune_and_report(&self, metrics: &crate::telemetry::Metrics, now: Instant) {
        let mut entries = self.entries.lock().expect("breakers");
        self.prune(&mut entries, now);
        let trusted = entries
            .values()
            .filter(|e| matches!(e.state, State::Trusted))
            .count();
        metrics.set_breakers(trusted, entries.len() - trusted);
    }

    fn prune(&self, entries: &mut HashMap<CredentialKey, Entry>, now: Instant) {
        let window = self.window;
        entries.retain(|_, e| {
            let idle = now.saturating_duration_since(e.used);
            match &e.state {
                State::Trusted => idle < IDLE_PRUNE,
                // Its window is over and nobody asked for it for another window: forgetting it
                // only turns the next use (if any) into a first use, which probes once.
                State::Tripped { until, .. } => now < *until || idle < window,
                State::Probing { .. } => true,
            }
        });
    }
}

/// Keeps the untrusted entries under [`MAX_UNTRUSTED`] before one more is added: the least
/// recently used tripped entries go first (probes in flight stay; they are bounded by the
/// calls in flight).
fn make_room_for_untrusted(entries: &mut HashMap<CredentialKey, Entry>) {
    let untrusted = entries
        .values()
        .filter(|e| !matches!(e.state, State::Trusted))
        .count();
    if untrusted < MAX_UNTRUSTED {
        return;
    }
    let mut tripped: Vec<(Instant, CredentialKey)> = entries
        .iter()
        .filter(|(_, e)| matches!(e.state, State::Tripped { .. }))
        .map(|(key, e)| (e.used, key.clone()))
        .collect();
    tripped.sort_unstable_by_key(|(used, _)| *used);
    for (_, key) in tripped.into_iter().take(untrusted + 1 - MAX_UNTRUSTED) {
        entries.remove(&key);
    }
}

/// Whether a failure says the credentials themselves were refused (a 401 or `*.0301`, IAM's
/// wrong password included), as opposed to a token that must be renewed.
pub fn is_authentication_failure(error: &CloudError) -> bool {
    matches!(
        crate::workspace::classify(error, &[]),
        Disposition::NeedsHuman(HumanReason::Unauthenticated)
    ) && !matches!(error, CloudError::Withheld { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{ApiError, ErrorBody, Sensitive};

    fn key(sk: &str) -> CredentialKey {
        CredentialKey::of(&Credentials::AkSk {
            access_key_id: "AK".into(),
            secret_access_key: Sensitive::new(sk),
            security_token: None,
        })
    }

    fn unauthorized() -> CloudError {
        CloudError::from(ApiError {
            operation: Operation::CancelRemoteAssistance,
            http_status: 401,
            body: ErrorBody {
                code: Some("APIGW.0301".into()),
                structured: true,
                ..ErrorBody::default()
            },
            request_id: None,
        })
    }

    #[test]
    fn keys_name_no_secret_and_change_with_it() {
        let k = key("very-secret");
        assert!(!format!("{k:?}").contains("very-secret"));
        assert_ne!(key("a"), key("b"));
        assert_eq!(key("a"), key("a"));
    }

    #[test]
    fn first_use_is_a_single_probe_then_trusted() {
        let b = Breakers::new(Duration::from_secs(300));
        let (k, t0) = (key("s"), Instant::now());
        assert!(matches!(
            b.admit(&k, Operation::CancelRemoteAssistance, t0),
            Admission::Go
        ));
        let later = t0 + Duration::from_millis(1);
        assert!(
            matches!(
                b.admit(&k, Operation::CancelRemoteAssistance, later),
                Admission::Wait(_)
            ),
            "others wait for the probe"
        );
        b.record(&k, Ok(()), later);
        assert!(matches!(
            b.admit(&k, Operation::CancelRemoteAssistance, later),
            Admission::Go
        ));
    }

    #[test]
    fn an_authentication_failure_holds_the_key_for_the_window_then_one_probe() {
        let b = Breakers::new(Duration::from_secs(300));
        let (k, t0) = (key("wrong"), Instant::now());
        assert!(matches!(
            b.admit(&k, Operation::CancelRemoteAssistance, t0),
            Admission::Go
        ));
        b.record(&k, Err(&unauthorized()), t0);
        for s in [1, 100, 299] {
            match b.admit(
                &k,
                Operation::ShowDesktopRemoteAssistanceInfo,
                t0 + Duration::from_secs(s),
            ) {
                Admission::Withhold(e) => {
                    assert_eq!(
                        crate::workspace::classify(&e, &[]),
                        Disposition::NeedsHuman(HumanReason::Unauthenticated)
                    );
                    assert_eq!(e.http_status(), None, "no call was made");
                }
                other => panic!("withheld at {s}s: {other:?}"),
            }
        }
        let end = t0 + Duration::from_secs(300);
        assert!(
            matches!(b.admit(&k, Operation::CancelRemoteAssistance, end), Admission::Go),
            "one probe"
        );
        assert!(
            matches!(
                b.admit(&k, Operation::CancelRemoteAssistance, end),
                Admission::Withhold(_)
            ),
            "only one"
        );
        b.record(&k, Err(&unauthorized()), end);
        assert!(matches!(
            b.admit(
                &k,
                Operation::CancelRemoteAssistance,
                end + Duration::from_secs(1)
            ),
            Admission::Withhold(_)
        ));
        assert!(
            matches!(
                b.admit(&key("fixed"), Operation::CancelRemoteAssistance, end),
                Admission::Go
            ),
            "a corrected secret is a new key"
        );
    }

    #[test]
    fn a_loop_of_wrong_keys_stays_bounded_and_ages_out() {
        let b = Breakers::new(Duration::from_secs(300));
        let t0 = Instant::now();
        for i in 0..(MAX_UNTRUSTED + 500) {
            let k = key(&format!("wrong-{i}"));
            let at = t0 + Duration::from_millis(i as u64);
            assert!(matches!(
                b.admit(&k, Operation::CancelRemoteAssistance, at),
                Admission::Go
            ));
            b.record(&k, Err(&unauthorized()), at);
        }
        assert_eq!(b.len(), MAX_UNTRUSTED, "at most MAX_UNTRUSTED untrusted entries");
        let newest = key(&format!("wrong-{}", MAX_UNTRUSTED + 499));
        assert!(
            matches!(
                b.admit(
                    &newest,
                    Operation::CancelRemoteAssistance,
                    t0 + Duration::from_secs(2)
                ),
                Admission::Withhold(_)
            ),
            "the most recent wrong key is still held back"
        );
        let metrics = crate::telemetry::Metrics::new();
        b.prune_and_report(&metrics, t0 + Duration::from_secs(299));
        assert_eq!(b.len(), MAX_UNTRUSTED, "nothing ages out within its window");
        b.prune_and_report(&metrics, t0 + Duration::from_secs(603));
        assert_eq!(
            b.len(),
            0,
            "tripped entries unused for a window after theirs are forgotten"
        );
        assert!(
            metrics
                .render()
                .contains("workspace_assist_credential_breakers{trust=\"untrusted\"} 0"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn other_failures_do_not_trip_and_idle_entries_are_pruned() {
        let b = Breakers::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let k = key("x");
        b.admit(&k, Operation::CancelRemoteAssistance, t0);
        let server_error = CloudError::Transport {
            operation: Operation::CancelRemoteAssistance,
            kind: crate::workspace::TransportKind::Timeout,
            message: String::new(),
            http_status: None,
            request_id: None,
        };
        b.record(&k, Err(&server_error), t0);
        assert!(matches!(
            b.admit(&k, Operation::CancelRemoteAssistance, t0),
            Admission::Go
        ));
        for i in 0..100 {
            let k = key(&format!("k{i}"));
            b.admit(&k, Operation::CancelRemoteAssistance, t0);
            b.record(&k, Ok(()), t0);
        }
        b.admit(
            &key("late"),
            Operation::CancelRemoteAssistance,
            t0 + IDLE_PRUNE + Duration::from_secs(1),
        );
        assert!(
            b.len() <= 2,
            "trusted entries unused for an hour are pruned: {}",
            b.len()
        );
    }
}
