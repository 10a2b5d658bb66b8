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
//! Entries are pruned when unused for [`IDLE_PRUNE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::workspace::{CloudError, Credentials, Disposition, HumanReason, Operation, PasswordLogin};

/// An entry not used for this long is forgotten.
pub const IDLE_PRUNE: Duration = Duration::from_secs(3600);

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
            entries
                .retain(|_, e| now.duration_since(e.used) < IDLE_PRUNE || !matches!(e.state, State::Trusted));
        }
        let Some(entry) = entries.get_mut(key) else {
            // First use: this call is the probe.
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
