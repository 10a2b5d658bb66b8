//! Credentials for the Workspace API. Secret parts never print: their `Debug` is redacted.

use std::fmt;

/// A secret string: access to it is explicit (`expose`), and `Debug`/`Display` show `***`.
#[derive(Clone, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Sensitive(value.into())
    }
    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How calls are authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// An access key and secret key (permanent, or temporary with a security token):
    /// requests are signed with `SDK-HMAC-SHA256`.
    AkSk {
        /// The access key ID (not secret: it names the key).
        access_key_id: String,
        /// The secret access key.
        secret_access_key: Sensitive,
        /// The security token of temporary credentials.
        security_token: Option<Sensitive>,
    },
    /// An IAM token, sent as `X-Auth-Token`.
    Token(Sensitive),
}

impl Credentials {
    /// A short description that names no secret, for messages: `AK/SK QTWA…`, `IAM token`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::AkSk {
                access_key_id,
                security_token,
                ..
            } => {
                let prefix: String = access_key_id.chars().take(4).collect();
                let kind = if security_token.is_some() {
                    "temporary AK/SK"
                } else {
                    "AK/SK"
                };
                format!("{kind} {prefix}…")
            }
            Credentials::Token(_) => "IAM token".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::AkSk {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Sensitive::new("very-secret-sk"),
            security_token: Some(Sensitive::new("very-secret-token")),
        };
        let shown = format!("{c:?} {}", c.describe());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("AKIDEXAMPLE"));
        let t = Credentials::Token(Sensitive::new("tok-secret"));
        assert!(!format!("{t:?}").contains("tok-secret"));
    }
}
