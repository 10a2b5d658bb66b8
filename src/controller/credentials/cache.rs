//! Credentials as last read, and what the operator keeps per credential: IAM tokens of password
//! logins and the breakers that pace failed authentications ([`crate::controller::pacing::breaker`]).
//!
//! Invariants: a cached Secret is used only while the [`crate::controller::credentials::index::SecretIndex`] says
//! its version is still the latest (speed only: anything else is read again); cached Secrets
//! (plaintext credentials) are dropped when no resource uses them any more.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::controller::credentials::index::SecretKey;
use crate::controller::pacing::breaker::Breakers;
use crate::workspace::{AmbientCredentials, AmbientSource, TokenCache};

/// Credentials Secrets by key, at the version read, plus tokens and breakers.
pub struct CredentialCache {
    secrets: Mutex<HashMap<SecretKey, (String, Secret)>>,
    /// IAM tokens of password logins.
    pub tokens: TokenCache,
    /// Per-credential pacing after authentication failures.
    pub breakers: Breakers,
    /// The temporary credentials of the operator's own identity, when it has one.
    pub ambient: Option<AmbientCredentials>,
}

impl CredentialCache {
    /// An empty cache whose breakers hold failed credentials back for `unauthenticated_pause`.
    pub fn new(
        unauthenticated_pause: std::time::Duration,
        ambient: Option<AmbientSource>,
    ) -> CredentialCache {
        CredentialCache {
            secrets: Mutex::default(),
            tokens: TokenCache::default(),
            breakers: Breakers::new(unauthenticated_pause),
            ambient: ambient.map(AmbientCredentials::new),
        }
    }

    /// The Secret read at `version`, if that is what the cache holds.
    pub fn at_version(&self, key: &SecretKey, version: &str) -> Option<Secret> {
        let secrets = self.secrets.lock().expect("credential cache");
        secrets
            .get(key)
            .filter(|(v, _)| v == version)
            .map(|(_, s)| s.clone())
    }

    /// Keeps what was read (None: the Secret does not exist).
    pub fn put(&self, key: SecretKey, secret: Option<&Secret>) {
        let mut secrets = self.secrets.lock().expect("credential cache");
        match secret {
            Some(s) => secrets.insert(key, (s.resource_version().unwrap_or_default(), s.clone())),
            None => secrets.remove(&key),
        };
    }

    /// Drops every Secret for which `in_use` does not hold.
    pub fn retain(&self, in_use: impl Fn(&SecretKey) -> bool) {
        self.secrets
            .lock()
            .expect("credential cache")
            .retain(|k, _| in_use(k));
    }

    /// How many Secrets are cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.secrets.lock().expect("credential cache").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, version: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some(version.into());
        s
    }

    #[test]
    fn only_the_latest_version_is_served_and_unused_secrets_are_dropped() {
        let cache = CredentialCache::new(std::time::Duration::from_secs(300), None);
        let key: SecretKey = ("ns".into(), "a".into());
        cache.put(key.clone(), Some(&secret("a", "1")));
        assert!(cache.at_version(&key, "1").is_some());
        assert!(
            cache.at_version(&key, "2").is_none(),
            "a newer version is read again"
        );
        cache.put(("ns".into(), "b".into()), Some(&secret("b", "1")));
        cache.retain(|k| k.1 == "a");
        assert_eq!(cache.len(), 1, "plaintext credentials of unused Secrets go");
        cache.put(key.clone(), None);
        assert_eq!(cache.len(), 0);
    }
}
