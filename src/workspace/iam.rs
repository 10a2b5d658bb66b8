//! IAM password login: exchanges a user's password for a project-scoped token
//! (`POST /v3/auth/tokens`), and caches tokens until well before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use url::Url;

use super::error::{ApiError, CloudError, Operation, TransportKind, parse_error_body};
use super::signing_credentials::Sensitive;

/// A token is renewed when less than this is left of its life (tokens live 24 hours).
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// A user's password login, scoped to a project.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PasswordLogin {
    /// IAM endpoint, e.g. `https://iam.cn-north-4.myhuaweicloud.com`.
    pub iam_endpoint: Url,
    /// The account (domain) name.
    pub domain_name: String,
    /// The IAM user name.
    pub username: String,
    /// The user's password.
    pub password: Sensitive,
    /// The project the token is scoped to.
    pub project_id: String,
}

/// The IAM endpoint of a region: `https://iam.{region}.myhuaweicloud.com`.
pub fn iam_endpoint_for_region(region: &str) -> Result<Url, String> {
    Url::parse(&format!("https://iam.{region}.myhuaweicloud.com"))
        .map_err(|e| format!("region {region:?}: {e}"))
}

#[derive(Clone)]
struct CachedToken {
    token: Sensitive,
    expires_at: jiff::Timestamp,
}

/// Tokens by login, shared by all reconciles. Logins are single-flight: while one login of a
/// user is in flight, other callers for that user wait for it instead of sending their own (a
/// wrong password sent in parallel can lock a human IAM user).
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<PasswordLogin, CachedToken>>,
    in_flight: Mutex<HashMap<PasswordLogin, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenCache {
    /// A valid token for `login`: the cached one unless it expires within
    /// [`RENEW_BEFORE_EXPIRY`], else a new one from IAM.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        login: &PasswordLogin,
    ) -> Result<Sensitive, CloudError> {
        if let Some(token) = self.cached(login) {
            return Ok(token);
        }
        let lock = self
            .in_flight
            .lock()
            .expect("token logins")
            .entry(login.clone())
            .or_default()
            .clone();
        let _single = lock.lock().await;
        // Another caller may have logged in while this one waited.
        if let Some(token) = self.cached(login) {
            return Ok(token);
        }
        let result = request_token(http, login).await;
        {
            let mut in_flight = self.in_flight.lock().expect("token logins");
            // The last holder (this one, plus the map's copy) removes the entry: bounded by the
            // logins in flight.
            if std::sync::Arc::strong_count(&lock) <= 2 {
                in_flight.remove(login);
            }
        }
        let fresh = result?;
        let token = fresh.token.clone();
        self.tokens
            .lock()
            .expect("token cache")
            .insert(login.clone(), fresh);
        Ok(token)
    }

    fn cached(&self, login: &PasswordLogin) -> Option<Sensitive> {
        let now = jiff::Timestamp::now();
        let renew_before = jiff::SignedDuration::try_from(RENEW_BEFORE_EXPIRY).expect("small");
        let mut tokens = self.tokens.lock().expect("token cache");
        // Expired tokens are dropped as they are met: the cache holds live logins only.
        tokens.retain(|_, t| t.expires_at > now);
        tokens
            .get(login)
            .filter(|t| t.expires_at.duration_since(now) > renew_before)
            .map(|t| t.token.clone())
    }

    /// Drops the cached token of `login` (the API said it must be renewed).
    pub fn invalidate(&self, login: &PasswordLogin) {
        self.tokens.lock().expect("token cache").remove(login);
    }
}

async fn request_token(http: &reqwest::Client, login: &PasswordLogin) -> Result<CachedToken, CloudError> {
    let op = Operation::IamTokenRequest;
    let mut url = login.iam_endpoint.clone();
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}/v3/auth/tokens"));
    let body = json!({
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": { "user": { "name": login.username, "password": login.password.expose(), "domain": { "name": login.domain_name } } }
            },
            "scope": { "project": { "id": login.project_id } }
        }
    });
    let transport = |kind: TransportKind, message: String, http_status: Option<u16>| CloudError::Transport {
        operation: op,
        kind,
        message,
        http_status,
        request_id: None,
    };
    let response = http.post(url).json(&body).send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        };
        transport(kind, format!("IAM token request: {e}"), None)
    })?;
    let status = response.status().as_u16();
    let request_id = super::client::request_id(response.headers());
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = super::client::read_limited(response).await.map_err(|e| {
        transport(
            TransportKind::Body,
            format!("IAM token answer: {e}"),
            Some(status),
        )
    })?;
    if !(200..300).contains(&status) {
        let parsed = parse_error_body(&bytes);
        let request_id = request_id.or_else(|| parsed.request_id.clone());
        return Err(CloudError::from(ApiError {
            operation: op,
            http_status: status,
            body: parsed,
            request_id,
        }));
    }
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        transport(
            TransportKind::Body,
            "IAM answered without X-Subject-Token".into(),
            Some(status),
        )
    })?;
    let expires_at = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v["token"]["expires_at"]
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        })
        .ok_or_else(|| {
            transport(
                TransportKind::Body,
                "IAM answered without token.expires_at".into(),
                Some(status),
            )
        })?;
    Ok(CachedToken {
        token: Sensitive::new(token),
        expires_at,
    })
}
