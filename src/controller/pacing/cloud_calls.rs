//! Cloud calls as the controller makes them: paced by the overall rate limit and by each
//! credential's breaker ([`crate::controller::pacing::breaker`]), with credentials resolved (a password login becomes
//! a cached IAM token, renewed at once on `*.0307`).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::workspace::{
    Answer, CloudError, Credentials, Disposition, Operation, PasswordLogin, Sensitive, TransportKind,
    classify,
};

use crate::controller::Context;
use crate::controller::pacing::breaker::{Admission, CredentialKey};
use crate::controller::pacing::fair::Claimant;

/// Longest a call waits for another call's probe of the same credentials before asking again.
const PROBE_WAIT: Duration = Duration::from_secs(1);

fn not_leader(operation: Operation, what: &str) -> CloudError {
    CloudError::Transport {
        operation,
        kind: TransportKind::NotLeader,
        message: format!("{what}: this instance can no longer prove it is the leader"),
        http_status: None,
        request_id: None,
    }
}

/// Credentials as a call needs them.
#[derive(Clone, Debug)]
pub enum CallCredentials {
    /// Sent as they are.
    Direct(Credentials),
    /// Exchanged for a token first.
    Login(PasswordLogin),
    /// Temporary credentials of the operator's own identity (fetched already): renewed and the
    /// call made once more when the cloud says they expired.
    Ambient(Credentials),
    /// Temporary credentials of an AgencyBinding's agency (fetched already): renewed once, the
    /// same way, when the cloud says they expired.
    Agency {
        /// The binding.
        binding: String,
        /// Its credentials.
        credentials: Credentials,
    },
}

/// Whether a refusal says the credentials expired: `*.0307` ("the token must be renewed"), or a
/// 401 whose message says so; also a call withheld because another call with the same
/// credentials got that answer.
fn says_expired(error: &CloudError, not_found_codes: &[String]) -> bool {
    if classify(error, not_found_codes) == Disposition::RenewToken {
        return true;
    }
    match error {
        CloudError::Api(api) => {
            api.http_status == 401
                && api
                    .body
                    .message
                    .as_deref()
                    .is_some_and(|m| m.to_ascii_lowercase().contains("expire"))
        }
        CloudError::Withheld { cause, .. } => says_expired(cause, not_found_codes),
        _ => false,
    }
}

/// Makes one cloud call with `credentials`, waiting for `claimant`'s turn in the rate limit
/// (a cancel goes ahead of other calls). With a password login, a token the API rejects as
/// expired is renewed and the call made once more.
pub(crate) async fn call<T, F, Fut>(
    ctx: &Context,
    claimant: &Claimant,
    operation: Operation,
    credentials: &CallCredentials,
    call: F,
) -> Result<Answer<T>, CloudError>
where
    F: Fn(Credentials) -> Fut,
    Fut: Future<Output = Result<Answer<T>, CloudError>>,
{
    let claimant = claimant.for_call(operation == Operation::CancelRemoteAssistance);
    let claimant = &claimant;
    let measured = |c: Credentials| {
        let fut = call(c);
        async move {
            ctx.rate_limit(claimant).await;
            // The leader fence: no call starts without a proof of leadership, and a call in
            // flight is cut when the proof runs out (another leader may act after that).
            let remaining = ctx.config.fence.remaining();
            if remaining.is_some_and(|r| r.is_zero()) {
                return Err(not_leader(operation, "not sent"));
            }
            let started = Instant::now();
            let result = match remaining {
                None => fut.await,
                Some(r) => tokio::time::timeout(r, fut)
                    .await
                    .unwrap_or_else(|_| Err(not_leader(operation, "cut off"))),
            };
            let outcome = result.as_ref().map(|a| a.http_status);
            ctx.metrics.cloud_call(operation, outcome, started.elapsed());
            result
        }
    };
    match credentials {
        CallCredentials::Direct(c) => {
            guarded(ctx, &CredentialKey::of(c), operation, || measured(c.clone())).await
        }
        CallCredentials::Login(login) => {
            let token = log_in(ctx, login, operation).await?;
            let key = CredentialKey::of(&Credentials::Token(token.clone()));
            match guarded(ctx, &key, operation, || {
                measured(Credentials::Token(token.clone()))
            })
            .await
            {
                Err(e) if classify(&e, &ctx.config.not_found_codes) == Disposition::RenewToken => {
                    tracing::info!("the IAM token must be renewed: requesting a new one");
                    ctx.credentials.tokens.invalidate(login);
                    let token = log_in(ctx, login, operation).await?;
                    let key = CredentialKey::of(&Credentials::Token(token.clone()));
                    guarded(ctx, &key, operation, || {
                        measured(Credentials::Token(token.clone()))
                    })
                    .await
                }
                other => other,
            }
        }
        CallCredentials::Ambient(c) => {
            match guarded(ctx, &CredentialKey::of(c), operation, || measured(c.clone())).await {
                Err(e) if says_expired(&e, &ctx.config.not_found_codes) => {
                    let Some(ambient) = &ctx.credentials.ambient else {
                        return Err(e);
                    };
                    if let Credentials::AkSk { access_key_id, .. } = c {
                        ambient.expired(access_key_id);
                    }
                    tracing::info!(
                        source = ambient.kind().as_str(),
                        "the temporary credentials expired: fetching new ones"
                    );
                    let fresh = ambient
                        .credentials(ctx.cloud.http())
                        .await
                        .map_err(|error| CloudError::Source { operation, error })?;
                    guarded(ctx, &CredentialKey::of(&fresh), operation, || {
                        measured(fresh.clone())
                    })
                    .await
                }
                other => other,
            }
        }
        CallCredentials::Agency { binding, credentials } => {
            let c = credentials;
            match guarded(ctx, &CredentialKey::of(c), operation, || measured(c.clone())).await {
                Err(e) if says_expired(&e, &ctx.config.not_found_codes) => {
                    if let Credentials::AkSk { access_key_id, .. } = c {
                        ctx.agencies.expired(binding, access_key_id);
                    }
                    tracing::info!(
                        binding,
                        "the agency's temporary credentials expired: fetching new ones"
                    );
                    let source = |error| CloudError::Source { operation, error };
                    let Ok(agency) = ctx.agency_binding(binding).await else {
                        return Err(e);
                    };
                    let fresh = match ctx.agency_credentials(&agency).await {
                        Ok(fresh) => fresh,
                        Err(crate::controller::Error::CredentialsSource(error)) => return Err(source(error)),
                        Err(_) => return Err(e),
                    };
                    guarded(ctx, &CredentialKey::of(&fresh), operation, || {
                        measured(fresh.clone())
                    })
                    .await
                }
                other => other,
            }
        }
    }
}

/// A token for a password login: cached, or one login at IAM, paced by the login's breaker
/// (a wrong password is not retried in parallel or within the lock window).
async fn log_in(ctx: &Context, login: &PasswordLogin, operation: Operation) -> Result<Sensitive, CloudError> {
    let key = CredentialKey::of_login(login);
    guarded(ctx, &key, operation, || {
        ctx.credentials.tokens.token(ctx.cloud.http(), login)
    })
    .await
}

/// Runs `call` when the breaker of `key` admits it, and records its answer.
async fn guarded<T, Fut>(
    ctx: &Context,
    key: &CredentialKey,
    operation: Operation,
    call: impl FnOnce() -> Fut,
) -> Result<T, CloudError>
where
    Fut: Future<Output = Result<T, CloudError>>,
{
    loop {
        match ctx.credentials.breakers.admit(key, operation, Instant::now()) {
            Admission::Go => break,
            Admission::Wait(done) => {
                let _ = tokio::time::timeout(PROBE_WAIT, done.notified()).await;
            }
            Admission::Withhold(e) => return Err(e),
        }
    }
    let mut probe = AbandonOnDrop {
        ctx,
        key,
        armed: true,
    };
    let result = call().await;
    ctx.credentials
        .breakers
        .record(key, result.as_ref().map(|_| ()), Instant::now());
    probe.armed = false;
    result
}

/// Lets the next caller probe when a call admitted by the breaker is dropped before its answer.
struct AbandonOnDrop<'a> {
    ctx: &'a Context,
    key: &'a CredentialKey,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.credentials.breakers.abandon(self.key);
        }
    }
}

/// The cloud call quota: `per_second` calls spaced evenly, no burst, so that no one-second
/// window (as the cloud's gateway counts) ever holds more than `per_second` calls. (A burst the
/// size of the rate would allow nearly twice the rate in the second after a quiet spell.)
pub(crate) fn cloud_quota(per_second: std::num::NonZeroU32) -> governor::Quota {
    governor::Quota::with_period(Duration::from_secs(1) / per_second.get())
        .expect("a non-zero period")
        .allow_burst(std::num::NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::RateLimiter;

    use super::cloud_quota;

    #[test]
    fn no_one_second_window_exceeds_the_cloud_rate_limit() {
        use governor::clock::{Clock, FakeRelativeClock};
        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::direct_with_clock(cloud_quota(NonZeroU32::new(50).unwrap()), clock.clone());
        // As many calls as the limiter lets through, each as early as it allows, over 3 s.
        let mut admitted = Vec::new();
        while clock.now().as_u64() < 3_000_000_000 {
            if limiter.check().is_ok() {
                admitted.push(clock.now().as_u64());
            } else {
                clock.advance(Duration::from_micros(100));
            }
        }
        let busiest = admitted
            .iter()
            .map(|t| {
                admitted
                    .iter()
                    .filter(|u| **u >= *t && **u < *t + 1_000_000_000)
                    .count()
            })
            .max()
            .unwrap();
        assert_eq!(busiest, 50, "at most the limit in any one-second window");
        assert!(admitted.len() >= 149, "and the limit is used: {}", admitted.len());
    }
}
