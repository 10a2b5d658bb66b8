//! Cloud calls as the controller makes them: paced by the overall rate limit, with credentials
//! resolved (a password login becomes a cached IAM token, renewed at once on `*.0307`).

use std::future::Future;

use std::time::Instant;

use crate::workspace::{Answer, CloudError, Credentials, Disposition, Operation, PasswordLogin, classify};

use super::Context;

/// Credentials as a call needs them.
#[derive(Clone, Debug)]
pub enum CallCredentials {
    /// Sent as they are.
    Direct(Credentials),
    /// Exchanged for a token first.
    Login(PasswordLogin),
}

impl Context {
    /// Makes one cloud call with `credentials`, waiting for the rate limit. With a password
    /// login, a token the API rejects as expired is renewed and the call made once more.
    pub async fn call<T, F, Fut>(&self, operation: Operation, credentials: &CallCredentials, call: F) -> Result<Answer<T>, CloudError>
    where
        F: Fn(Credentials) -> Fut,
        Fut: Future<Output = Result<Answer<T>, CloudError>>,
    {
        let measured = |c: Credentials| {
            let fut = call(c);
            async move {
                self.rate_limit().await;
                let started = Instant::now();
                let result = fut.await;
                let outcome = result.as_ref().map(|a| a.http_status);
                self.metrics.cloud_call(operation, outcome, started.elapsed());
                result
            }
        };
        match credentials {
            CallCredentials::Direct(c) => measured(c.clone()).await,
            CallCredentials::Login(login) => {
                let token = self.tokens.token(self.cloud.http(), login).await?;
                match measured(Credentials::Token(token)).await {
                    Err(e) if classify(&e, &self.config.not_found_codes) == Disposition::RenewToken => {
                        tracing::info!("the IAM token must be renewed: requesting a new one");
                        self.tokens.invalidate(login);
                        let token = self.tokens.token(self.cloud.http(), login).await?;
                        measured(Credentials::Token(token)).await
                    }
                    other => other,
                }
            }
        }
    }
}
