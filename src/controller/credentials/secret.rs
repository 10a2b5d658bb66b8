//! Reads cloud credentials from a Kubernetes Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::workspace::{Credentials, Sensitive};

/// Secret keys of an IAM password login.
pub const USERNAME: &str = "username";
/// The user's password.
pub const PASSWORD: &str = "password";
/// The account (domain) name.
pub const DOMAIN_NAME: &str = "domainName";
/// Optional IAM endpoint URL for the login (default: the operator's --iam-endpoint, else the
/// region's).
pub const IAM_ENDPOINT: &str = "iamEndpoint";

/// What a credentials Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretCredentials {
    /// Credentials the API takes as they are (AK/SK or a token).
    Direct(Credentials),
    /// An IAM user's password, exchanged for a token.
    Password {
        /// Account (domain) name.
        domain_name: String,
        /// IAM user name.
        username: String,
        /// The password.
        password: Sensitive,
        /// IAM endpoint from the Secret, when set.
        iam_endpoint: Option<String>,
    },
}

/// Secret key of the access key ID.
pub const ACCESS_KEY_ID: &str = "accessKeyId";
/// Secret key of the secret access key.
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// Secret key of the security token of temporary credentials.
pub const SECURITY_TOKEN: &str = "securityToken";
/// Secret key of an IAM token.
pub const TOKEN: &str = "token";

/// Why a Secret gives no credentials. Messages name keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The resource names no Secret and the operator has no default credentials.
    #[error("spec.credentialsSecretRef is not set and the operator was started without default credentials")]
    NotConfigured,
    /// The Secret does not exist.
    #[error("Secret {0} not found")]
    SecretNotFound(String),
    /// The Secret's type is not one that holds these keys.
    #[error("Secret {name} has type {type_}; use an Opaque Secret")]
    WrongType {
        /// Secret name.
        name: String,
        /// Its type.
        type_: String,
    },
    /// A key holds bytes that are not UTF-8 text.
    #[error("key {key} of Secret {name} is not UTF-8 text")]
    NotText {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
    },
    /// A key is present but empty.
    #[error("key {key} of Secret {name} is empty")]
    Empty {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
    },
    /// Neither an AK/SK pair nor a token nor a password login.
    #[error(
        "Secret {0} holds no credentials: set accessKeyId and secretAccessKey (and securityToken for temporary keys), token, or username, password and domainName"
    )]
    NoCredentials(String),
    /// A password login without an IAM endpoint to send it to.
    #[error(
        "Secret {0} holds a password login, but there is no IAM endpoint: set iamEndpoint in the Secret, spec.region, or the operator's --iam-endpoint"
    )]
    NoIamEndpoint(String),
    /// Half an AK/SK pair.
    #[error("Secret {name} has {present} but not {missing}")]
    Incomplete {
        /// Secret name.
        name: String,
        /// The key that is there.
        present: &'static str,
        /// The key that is missing.
        missing: &'static str,
    },
}

impl CredentialsError {
    /// A stable CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialsError::NotConfigured => "CredentialsNotConfigured",
            CredentialsError::SecretNotFound(_) => "CredentialsSecretNotFound",
            _ => "CredentialsInvalid",
        }
    }
}

/// Reads credentials from a Secret's data.
pub fn from_secret(secret: &Secret) -> Result<SecretCredentials, CredentialsError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    if let Some(t) = secret.type_.as_deref()
        && !t.is_empty()
        && t != "Opaque"
    {
        return Err(CredentialsError::WrongType {
            name,
            type_: t.to_string(),
        });
    }
    let empty = BTreeMap::new();
    from_data(&name, secret.data.as_ref().unwrap_or(&empty))
}

/// Reads credentials from the data of the Secret `name`.
pub fn from_data(
    name: &str,
    data: &BTreeMap<String, ByteString>,
) -> Result<SecretCredentials, CredentialsError> {
    let text = |key: &str| -> Result<Option<Sensitive>, CredentialsError> {
        let Some(bytes) = data.get(key) else {
            return Ok(None);
        };
        let value = String::from_utf8(bytes.0.clone()).map_err(|_| CredentialsError::NotText {
            name: name.into(),
            key: key.into(),
        })?;
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(CredentialsError::Empty {
                name: name.into(),
                key: key.into(),
            });
        }
        Ok(Some(Sensitive::new(value)))
    };
    let ak = text(ACCESS_KEY_ID)?;
    let sk = text(SECRET_ACCESS_KEY)?;
    let incomplete = |present, missing| CredentialsError::Incomplete {
        name: name.into(),
        present,
        missing,
    };
    match (ak, sk) {
        (Some(ak), Some(sk)) => Ok(SecretCredentials::Direct(Credentials::AkSk {
            access_key_id: ak.expose().to_string(),
            secret_access_key: sk,
            security_token: text(SECURITY_TOKEN)?,
        })),
        (Some(_), None) => Err(incomplete(ACCESS_KEY_ID, SECRET_ACCESS_KEY)),
        (None, Some(_)) => Err(incomplete(SECRET_ACCESS_KEY, ACCESS_KEY_ID)),
        (None, None) => {
            if let Some(token) = text(TOKEN)? {
                return Ok(SecretCredentials::Direct(Credentials::Token(token)));
            }
            match (text(USERNAME)?, text(PASSWORD)?, text(DOMAIN_NAME)?) {
                (Some(user), Some(password), Some(domain)) => Ok(SecretCredentials::Password {
                    domain_name: domain.expose().to_string(),
                    username: user.expose().to_string(),
                    password,
                    iam_endpoint: text(IAM_ENDPOINT)?.map(|e| e.expose().to_string()),
                }),
                (None, None, None) => Err(CredentialsError::NoCredentials(name.into())),
                (u, p, _) => Err(if u.is_none() {
                    incomplete(PASSWORD, USERNAME)
                } else if p.is_none() {
                    incomplete(USERNAME, PASSWORD)
                } else {
                    incomplete(USERNAME, DOMAIN_NAME)
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect()
    }

    #[test]
    fn reads_each_kind() {
        let c = from_data(
            "s",
            &data(&[("accessKeyId", b"AK"), ("secretAccessKey", b"SK\n")]),
        )
        .unwrap();
        assert_eq!(
            c,
            SecretCredentials::Direct(Credentials::AkSk {
                access_key_id: "AK".into(),
                secret_access_key: Sensitive::new("SK"),
                security_token: None
            })
        );
        let c = from_data(
            "s",
            &data(&[
                ("accessKeyId", b"AK"),
                ("secretAccessKey", b"SK"),
                ("securityToken", b"T"),
            ]),
        )
        .unwrap();
        assert!(matches!(
            c,
            SecretCredentials::Direct(Credentials::AkSk {
                security_token: Some(_),
                ..
            })
        ));
        let c = from_data("s", &data(&[("token", b"TOK")])).unwrap();
        assert_eq!(
            c,
            SecretCredentials::Direct(Credentials::Token(Sensitive::new("TOK")))
        );
        let c = from_data(
            "s",
            &data(&[("username", b"u"), ("password", b"p"), ("domainName", b"d")]),
        )
        .unwrap();
        assert!(matches!(
            c,
            SecretCredentials::Password {
                iam_endpoint: None,
                ..
            }
        ));
        let e = from_data("s", &data(&[("username", b"u"), ("password", b"p")])).unwrap_err();
        assert_eq!(e.to_string(), "Secret s has username but not domainName");
    }

    #[test]
    fn explains_what_is_wrong_without_values() {
        let e = from_data("s", &data(&[("accessKeyId", b"AK")])).unwrap_err();
        assert_eq!(e.to_string(), "Secret s has accessKeyId but not secretAccessKey");
        let e = from_data("s", &data(&[("accessKeyId", b"AK"), ("secretAccessKey", b"  ")])).unwrap_err();
        assert_eq!(e.to_string(), "key secretAccessKey of Secret s is empty");
        let e = from_data("s", &data(&[("token", &[0xff, 0xfe])])).unwrap_err();
        assert_eq!(e.to_string(), "key token of Secret s is not UTF-8 text");
        let e = from_data("s", &data(&[("apiKey", b"x")])).unwrap_err();
        assert!(matches!(e, CredentialsError::NoCredentials(_)));
        let mut secret = Secret::default();
        secret.metadata.name = Some("tls".into());
        secret.type_ = Some("kubernetes.io/tls".into());
        assert_eq!(
            from_secret(&secret).unwrap_err().to_string(),
            "Secret tls has type kubernetes.io/tls; use an Opaque Secret"
        );
    }
}
