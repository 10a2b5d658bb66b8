//! Cloud calls as the controller makes them: paced by the overall rate limit, with credentials
//! resolved (a password login becomes a cached IAM token, renewed at once on `*.0307`).

use std::future::Future;

use crate::workspace::{Credentials, CloudError, Disposition, PasswordLogin, classify};

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
    pub async fn call<T, F, Fut>(&self, credentials: &CallCredentials, call: F) -> Result<T, CloudError>
    where
        F: Fn(Credentials) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        match credentials {
            CallCredentials::Direct(c) => {
                self.rate_limit().await;
                call(c.clone()).await
            }
            CallCredentials::Login(login) => {
                let token = self.tokens.token(self.cloud.http(), login).await?;
                self.rate_limit().await;
                match call(Credentials::Token(token)).await {
                    Err(e) if classify(&e, &self.config.not_found_codes) == Disposition::RenewToken => {
                        tracing::info!("the IAM token must be renewed: requesting a new one");
                        self.tokens.invalidate(login);
                        let token = self.tokens.token(self.cloud.http(), login).await?;
                        self.rate_limit().await;
                        call(Credentials::Token(token)).await
                    }
                    other => other,
                }
            }
        }
    }
}
