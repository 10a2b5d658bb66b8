//! Credentials without a Secret: temporary AK/SK and security token from the operator pod's own
//! identity, as the official SDKs' credential providers get them (CCE pod identity, OIDC
//! federation through STS, the ECS agency of the node). One source, chosen by the admin; no
//! fallback chain.
//!
//! The credentials are cached and shared by every caller; one fetch at a time (single-flight);
//! refreshed before fewer than [`REFRESH_BEFORE_EXPIRY`] remain (or half their life, when they
//! live less than twice that); and after a failed fetch, the next one waits (doubling, up to
//! [`MAX_FETCH_BACKOFF`]) so that many resources never hammer the metadata service or STS.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use url::Url;

use super::error::parse_error_body;
use super::signing_credentials::{Credentials, Sensitive};

/// The official SDKs refresh temporary credentials when fewer than this many minutes remain.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(40 * 60);

/// Longest wait between failed fetches.
pub const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(300);

/// Default STS endpoint of the SDKs.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.cn-north-4.myhuaweicloud.com";

/// Default address of the ECS metadata service.
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

/// What the metadata service says when the node has no agency (a 401 that a new session token
/// does not fix).
const NO_AGENCY: &str = "Please configure Cloud Service Agency first";

/// The kinds of ambient identity an admin can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AmbientKind {
    /// CCE pod identity: `HC_CONTAINER_CREDENTIALS_FULL_URI` and a projected token file.
    PodIdentity,
    /// OIDC workload identity: STS `assume-with-oidc` with a projected ServiceAccount token.
    Oidc,
    /// The ECS agency of the node, through the metadata service.
    EcsMetadata,
    /// An agency of another account, assumed with the operator's own identity (an
    /// AgencyBinding; not a choice of `--ambient-credentials`).
    #[value(skip)]
    Agency,
}

impl AmbientKind {
    /// The name of the source, as the flag takes it and status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            AmbientKind::PodIdentity => "pod-identity",
            AmbientKind::Oidc => "oidc",
            AmbientKind::EcsMetadata => "ecs-metadata",
            AmbientKind::Agency => "agency",
        }
    }

    /// The condition reason when the source gives no credentials.
    pub fn failure_reason(self) -> &'static str {
        match self {
            AmbientKind::PodIdentity => "PodIdentityCredentialsFailed",
            AmbientKind::Oidc => "OidcCredentialsFailed",
            AmbientKind::EcsMetadata => "EcsMetadataCredentialsFailed",
            AmbientKind::Agency => "AgencyCredentialsFailed",
        }
    }
}

/// Where an OIDC ID token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdToken {
    /// A file the kubelet keeps fresh: read on every fetch.
    File(PathBuf),
    /// The token itself (`HUAWEICLOUD_OIDC_ID_TOKEN`).
    Literal(Sensitive),
}

/// An ambient identity, configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmbientSource {
    /// CCE pod identity.
    PodIdentity {
        /// `HC_CONTAINER_CREDENTIALS_FULL_URI`.
        uri: Url,
        /// `HC_CONTAINER_AUTHORIZATION_TOKEN_FILE`: re-read on every fetch (the kubelet rotates it).
        token_file: PathBuf,
    },
    /// OIDC federation through STS.
    Oidc {
        /// `HUAWEICLOUD_SDK_STS_ENDPOINT`.
        sts_endpoint: Url,
        /// `HUAWEICLOUD_OIDC_PROVIDER_URN`.
        provider_urn: String,
        /// `HUAWEICLOUD_OIDC_AGENCY_URN`.
        agency_urn: String,
        /// `HUAWEICLOUD_OIDC_SESSION_NAME`.
        session_name: String,
        /// `HUAWEICLOUD_OIDC_DURATION_SECONDS`.
        duration_seconds: u32,
        /// `HUAWEICLOUD_OIDC_TOKEN_FILE` or `HUAWEICLOUD_OIDC_ID_TOKEN`.
        id_token: IdToken,
    },
    /// The node's agency through the metadata service.
    EcsMetadata {
        /// The metadata service (`http://169.254.169.254`).
        endpoint: Url,
    },
}

impl AmbientSource {
    /// Reads the source of `kind` from the environment the way the SDKs do (`env` looks a
    /// variable up). `metadata_endpoint` overrides the ECS metadata address.
    pub fn from_env(
        kind: AmbientKind,
        env: &dyn Fn(&str) -> Option<String>,
        metadata_endpoint: Option<Url>,
    ) -> Result<AmbientSource, String> {
        let var = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                format!(
                    "--ambient-credentials={} needs the environment variable {name}",
                    kind.as_str()
                )
            })
        };
        let url =
            |name: &str, value: String| Url::parse(&value).map_err(|e| format!("{name} is not a URL: {e}"));
        Ok(match kind {
            AmbientKind::PodIdentity => AmbientSource::PodIdentity {
                uri: url(
                    "HC_CONTAINER_CREDENTIALS_FULL_URI",
                    required("HC_CONTAINER_CREDENTIALS_FULL_URI")?,
                )?,
                token_file: required("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE")?.into(),
            },
            AmbientKind::Oidc => {
                let id_token = match (var("HUAWEICLOUD_OIDC_TOKEN_FILE"), env("HUAWEICLOUD_OIDC_ID_TOKEN").filter(|t| !t.trim().is_empty())) {
                    (Some(file), _) => IdToken::File(file.into()),
                    (None, Some(token)) => IdToken::Literal(Sensitive::new(token.trim())),
                    (None, None) => return Err("--ambient-credentials=oidc needs HUAWEICLOUD_OIDC_TOKEN_FILE (or HUAWEICLOUD_OIDC_ID_TOKEN)".into()),
                };
                let duration_seconds = match var("HUAWEICLOUD_OIDC_DURATION_SECONDS") {
                    Some(d) => d.parse().map_err(|_| {
                        format!("HUAWEICLOUD_OIDC_DURATION_SECONDS is not a number of seconds: {d:?}")
                    })?,
                    None => 3600,
                };
                AmbientSource::Oidc {
                    sts_endpoint: url(
                        "HUAWEICLOUD_SDK_STS_ENDPOINT",
                        var("HUAWEICLOUD_SDK_STS_ENDPOINT").unwrap_or_else(|| DEFAULT_STS_ENDPOINT.into()),
                    )?,
                    provider_urn: required("HUAWEICLOUD_OIDC_PROVIDER_URN")?,
                    agency_urn: required("HUAWEICLOUD_OIDC_AGENCY_URN")?,
                    session_name: var("HUAWEICLOUD_OIDC_SESSION_NAME")
                        .unwrap_or_else(|| "oidc-sts-session".into()),
                    duration_seconds,
                    id_token,
                }
            }
            AmbientKind::EcsMetadata => AmbientSource::EcsMetadata {
                endpoint: metadata_endpoint
                    .unwrap_or_else(|| Url::parse(DEFAULT_METADATA_ENDPOINT).expect("a URL")),
            },
            AmbientKind::Agency => {
                return Err(
                    "an agency is configured with an AgencyBinding, not --ambient-credentials".into(),
                );
            }
        })
    }

    /// Which kind of source this is.
    pub fn kind(&self) -> AmbientKind {
        match self {
            AmbientSource::PodIdentity { .. } => AmbientKind::PodIdentity,
            AmbientSource::Oidc { .. } => AmbientKind::Oidc,
            AmbientSource::EcsMetadata { .. } => AmbientKind::EcsMetadata,
        }
    }
}

/// Temporary credentials: AK/SK with a security token, until `expires_at`.
#[derive(Clone, Debug)]
pub struct TemporaryCredentials {
    /// The temporary access key ID.
    pub access_key_id: String,
    /// The temporary secret key.
    pub secret_access_key: Sensitive,
    /// The security token, sent as `X-Security-Token`.
    pub security_token: Sensitive,
    /// When they stop working.
    pub expires_at: jiff::Timestamp,
}

impl TemporaryCredentials {
    /// The credentials to sign calls with.
    pub fn credentials(&self) -> Credentials {
        Credentials::AkSk {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            security_token: Some(self.security_token.clone()),
        }
    }
}

/// Reads the temporary-credential JSON: at top level or under `credential`/`credentials`, with
/// the field aliases of the SDKs. The error names fields, never values.
pub fn parse_temporary_credentials(body: &[u8]) -> Result<TemporaryCredentials, String> {
    let json: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    let object = ["credential", "credentials"]
        .iter()
        .find_map(|k| json.get(k).filter(|v| v.is_object()))
        .unwrap_or(&json);
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| object.get(n).and_then(Value::as_str))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let missing = |what: &str| format!("the answer has no {what}");
    let access =
        field(&["access", "accessKeyId", "access_key_id"]).ok_or_else(|| missing("access key (access)"))?;
    let secret = field(&["secret", "secretAccessKey", "secret_access_key"])
        .ok_or_else(|| missing("secret key (secret)"))?;
    let token = field(&["securitytoken", "securityToken", "security_token"])
        .ok_or_else(|| missing("security token (securitytoken)"))?;
    let expires = field(&["expires_at", "expiration"]).ok_or_else(|| missing("expiry (expires_at)"))?;
    let expires_at = expires
        .parse::<jiff::Timestamp>()
        .map_err(|_| format!("its expiry {expires:?} is not a UTC time"))?;
    Ok(TemporaryCredentials {
        access_key_id: access.to_string(),
        secret_access_key: Sensitive::new(secret),
        security_token: Sensitive::new(token),
        expires_at,
    })
}

/// Why the source gave no credentials. Never holds a token or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} credentials: {message}", .kind.as_str())]
pub struct AmbientError {
    /// The source.
    pub kind: AmbientKind,
    /// What went wrong.
    pub message: String,
    /// The HTTP status of the source's answer, when one arrived.
    pub http_status: Option<u16>,
    /// The error code of the source's answer, when it had one.
    pub code: Option<String>,
    /// The source's own words (its error message may name agencies and accounts): for the
    /// operator's log only, never in a resource's status or Events.
    pub source_message: Option<String>,
    /// When the source is asked again (None: at the next call). Not in the message, which
    /// stays the same from one attempt to the next (status is written only when it changes).
    pub next_attempt_in: Option<Duration>,
}

struct Cached {
    credentials: TemporaryCredentials,
    /// When to fetch new ones.
    refresh_at: jiff::Timestamp,
}

/// Whether cached credentials are still good for a call (expiring later than
/// [`AmbientCredentials::EXPIRY_MARGIN`] from now).
fn still_valid(c: &Cached) -> bool {
    let margin = jiff::SignedDuration::try_from(AmbientCredentials::EXPIRY_MARGIN).unwrap_or_default();
    jiff::Timestamp::now()
        .checked_add(margin)
        .is_ok_and(|t| t < c.credentials.expires_at)
}

struct LastFailure {
    error: AmbientError,
    at: Instant,
    consecutive: u32,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    failure: Option<LastFailure>,
    fetches: u64,
}

/// The temporary credentials of one source (an ambient identity, or an agency), shared by all
/// callers.
pub struct AmbientCredentials {
    kind: AmbientKind,
    /// The source fetched from; None: the caller of [`AmbientCredentials::credentials_with`]
    /// says how to fetch (an agency, whose request needs the operator's own credentials).
    source: Option<AmbientSource>,
    state: Mutex<State>,
    single_flight: tokio::sync::Mutex<()>,
}

/// When to refresh credentials fetched `fetched_at` that expire at `expires_at`: when fewer than
/// [`REFRESH_BEFORE_EXPIRY`] remain, or at half their life when it is shorter than twice that (a
/// 15-minute STS session would otherwise be fetched again on every call).
pub fn refresh_at(fetched_at: jiff::Timestamp, expires_at: jiff::Timestamp) -> jiff::Timestamp {
    let life = expires_at.duration_since(fetched_at);
    let margin = jiff::SignedDuration::try_from(REFRESH_BEFORE_EXPIRY)
        .expect("small")
        .min(life / 2);
    expires_at - margin
}

/// The wait after `consecutive` failed fetches: 1 s doubling, up to [`MAX_FETCH_BACKOFF`].
pub fn fetch_backoff(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.saturating_sub(1).min(16)).min(MAX_FETCH_BACKOFF)
}

impl AmbientCredentials {
    /// Credentials from `source`, fetched when first needed.
    pub fn new(source: AmbientSource) -> AmbientCredentials {
        AmbientCredentials {
            kind: source.kind(),
            source: Some(source),
            state: Mutex::default(),
            single_flight: tokio::sync::Mutex::new(()),
        }
    }

    /// Credentials of `kind` fetched by the callers of [`AmbientCredentials::credentials_with`].
    pub fn fetched_by_caller(kind: AmbientKind) -> AmbientCredentials {
        AmbientCredentials {
            kind,
            source: None,
            state: Mutex::default(),
            single_flight: tokio::sync::Mutex::new(()),
        }
    }

    /// The source's kind.
    pub fn kind(&self) -> AmbientKind {
        self.kind
    }

    /// How many fetches were made (answered or not).
    pub fn fetches(&self) -> u64 {
        self.state.lock().expect("ambient state").fetches
    }

    /// Credentials to sign a call with: the cached ones while fresh, else one fetch shared by
    /// every caller. Within the backoff after a failure, the failure is returned without a fetch.
    pub async fn credentials(&self, http: &reqwest::Client) -> Result<Credentials, AmbientError> {
        let Some(source) = &self.source else {
            return Err(failure(self.kind, "no source to fetch from"));
        };
        self.credentials_with(|| fetch(source, http)).await
    }

    /// Like [`AmbientCredentials::credentials`], with `fetch` making the one fetch when one is
    /// needed.
    pub async fn credentials_with<F, Fut>(&self, fetch: F) -> Result<Credentials, AmbientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TemporaryCredentials, AmbientError>>,
    {
        if let Some(c) = self.ready()? {
            return Ok(c);
        }
        let _single = self.single_flight.lock().await;
        // Another caller may have fetched (or failed) while this one waited.
        if let Some(c) = self.ready()? {
            return Ok(c);
        }
        self.state.lock().expect("ambient state").fetches += 1;
        let fetched_at = jiff::Timestamp::now();
        let result = fetch().await;
        let mut state = self.state.lock().expect("ambient state");
        match result {
            Ok(credentials) => {
                state.failure = None;
                let refresh_at = refresh_at(fetched_at, credentials.expires_at);
                let signed = credentials.credentials();
                tracing::info!(source = self.kind().as_str(), access_key = %signed.describe(), expires_at = %credentials.expires_at, "fetched temporary credentials");
                state.cached = Some(Cached {
                    credentials,
                    refresh_at,
                });
                Ok(signed)
            }
            Err(mut error) => {
                let consecutive = state.failure.as_ref().map_or(0, |f| f.consecutive) + 1;
                error.next_attempt_in = Some(fetch_backoff(consecutive));
                tracing::warn!(error = %error, source_message = error.source_message.as_deref().unwrap_or(""), retry_in_s = fetch_backoff(consecutive).as_secs(), "could not fetch temporary credentials");
                state.failure = Some(LastFailure {
                    error: error.clone(),
                    at: Instant::now(),
                    consecutive,
                });
                // An early refresh that failed: the cached credentials still work until they
                // expire, and are used until then (the next refresh waits for the backoff).
                match state.cached.as_ref().filter(|c| still_valid(c)) {
                    Some(c) => Ok(c.credentials.credentials()),
                    None => Err(error),
                }
            }
        }
    }

    /// Ok(Some) when cached credentials are fresh, Err while a failure's backoff runs, else
    /// Ok(None): fetch.
    fn ready(&self) -> Result<Option<Credentials>, AmbientError> {
        let state = self.state.lock().expect("ambient state");
        if let Some(c) = &state.cached
            && jiff::Timestamp::now() < c.refresh_at
        {
            return Ok(Some(c.credentials.credentials()));
        }
        if let Some(f) = &state.failure {
            let wait = fetch_backoff(f.consecutive);
            let elapsed = f.at.elapsed();
            if elapsed < wait {
                if let Some(c) = state.cached.as_ref().filter(|c| still_valid(c)) {
                    return Ok(Some(c.credentials.credentials()));
                }
                let mut error = f.error.clone();
                error.next_attempt_in = Some(wait - elapsed);
                return Err(error);
            }
        }
        Ok(None)
    }

    /// How long before their expiry cached credentials stop being used after a failed refresh
    /// (a call signed now must still be valid when it arrives).
    pub const EXPIRY_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

    /// The cloud said the credentials with `access_key_id` expired: the next call fetches new
    /// ones (unless another caller did already).
    pub fn expired(&self, access_key_id: &str) {
        let mut state = self.state.lock().expect("ambient state");
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.credentials.access_key_id == access_key_id)
        {
            state.cached = None;
        }
    }
}

/// The failure of a fetch from `kind`.
pub(super) fn failure(kind: AmbientKind, message: impl Into<String>) -> AmbientError {
    AmbientError {
        kind,
        message: message.into(),
        http_status: None,
        code: None,
        source_message: None,
        next_attempt_in: None,
    }
}

/// One fetch from the source.
async fn fetch(source: &AmbientSource, http: &reqwest::Client) -> Result<TemporaryCredentials, AmbientError> {
    let kind = source.kind();
    match source {
        AmbientSource::PodIdentity { uri, token_file } => {
            let token = read_token(kind, token_file).await?;
            let request = http
                .post(uri.clone())
                .header("Authorization", token.expose())
                .json(&json!({}));
            credentials_from(kind, request).await
        }
        AmbientSource::Oidc {
            sts_endpoint,
            provider_urn,
            agency_urn,
            session_name,
            duration_seconds,
            id_token,
        } => {
            let token = match id_token {
                IdToken::File(path) => read_token(kind, path).await?,
                IdToken::Literal(t) => t.clone(),
            };
            let mut url = sts_endpoint.clone();
            let base = url.path().trim_end_matches('/').to_string();
            url.set_path(&format!("{base}/v5/agencies/assume-with-oidc"));
            let body = json!({
                "provider_urn": provider_urn,
                "agency_urn": agency_urn,
                "agency_session_name": session_name,
                "id_token": token.expose(),
                "duration_seconds": duration_seconds,
            });
            credentials_from(kind, http.post(url).json(&body)).await
        }
        AmbientSource::EcsMetadata { endpoint } => ecs_metadata(endpoint, http).await,
    }
}

/// Reads a token file (the kubelet rotates it: never cached).
async fn read_token(kind: AmbientKind, path: &std::path::Path) -> Result<Sensitive, AmbientError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| failure(kind, format!("reading the token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(failure(
            kind,
            format!("the token file {} is empty", path.display()),
        ));
    }
    Ok(Sensitive::new(token))
}

/// Sends `request` and reads the temporary credentials from a 2xx answer.
async fn credentials_from(
    kind: AmbientKind,
    request: reqwest::RequestBuilder,
) -> Result<TemporaryCredentials, AmbientError> {
    let (status, body) = send(kind, request).await?;
    if !(200..300).contains(&status) {
        return Err(refused(kind, status, &body));
    }
    parse_temporary_credentials(&body).map_err(|why| AmbientError {
        http_status: Some(status),
        ..failure(kind, why)
    })
}

pub(super) async fn send(
    kind: AmbientKind,
    request: reqwest::RequestBuilder,
) -> Result<(u16, bytes::Bytes), AmbientError> {
    let response = request
        .send()
        .await
        .map_err(|e| failure(kind, format!("no answer: {}", without_url(&e))))?;
    let status = response.status().as_u16();
    let body = super::client::read_limited(response)
        .await
        .map_err(|e| AmbientError {
            http_status: Some(status),
            ..failure(kind, format!("reading the answer: {}", without_url(&e)))
        })?;
    Ok((status, bytes::Bytes::from(body)))
}

/// A transport error's text without the URL (it may carry a query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "(the source)");
    }
    text
}

/// A refusal, with the code and message of the answer's error body.
/// The message (what tenants may read: the status and the code) is kept apart from the
/// source's own words (for the operator's log).
pub(super) fn refused(kind: AmbientKind, status: u16, body: &[u8]) -> AmbientError {
    let parsed = parse_error_body(body);
    let mut message = match &parsed.code {
        Some(code) => format!("HTTP {status} {}", crate::text::bounded(code, 64)),
        None => format!("HTTP {status}"),
    };
    if String::from_utf8_lossy(body).contains(NO_AGENCY) {
        message.push_str(": the node has no Cloud Service Agency");
    }
    message.push_str(" (the operator's log has the source's message)");
    AmbientError {
        http_status: Some(status),
        code: parsed.code.clone(),
        source_message: parsed.message.map(|m| crate::text::bounded(&m, 512).into_owned()),
        ..failure(kind, message)
    }
}

/// The ECS agency: a session token first (PUT), then the security key (GET) with it. A
/// 404/405/503 on the PUT means no token support (GET without one); a 401 that is not "no
/// agency" means a new session token and one more try.
async fn ecs_metadata(endpoint: &Url, http: &reqwest::Client) -> Result<TemporaryCredentials, AmbientError> {
    let kind = AmbientKind::EcsMetadata;
    let at = |path: &str| {
        let mut url = endpoint.clone();
        url.set_path(path);
        url
    };
    let session_token = || async {
        let request = http
            .put(at("/meta-data/latest/api/token"))
            .header("X-Metadata-Token-Ttl-Seconds", "21600");
        let (status, body) = send(kind, request).await?;
        match status {
            200..=299 => Ok(Some(Sensitive::new(String::from_utf8_lossy(&body).trim()))),
            404 | 405 | 503 => Ok(None),
            _ => Err(refused(kind, status, &body)),
        }
    };
    let security_key = |token: Option<Sensitive>| async move {
        let mut request = http.get(at("/openstack/latest/securitykey"));
        if let Some(t) = &token {
            request = request.header("X-Metadata-Token", t.expose());
        }
        send(kind, request).await
    };
    let token = session_token().await?;
    let had_token = token.is_some();
    let (mut status, mut body) = security_key(token).await?;
    if status == 401 && had_token && !String::from_utf8_lossy(&body).contains(NO_AGENCY) {
        let (s, b) = security_key(session_token().await?).await?;
        (status, body) = (s, b);
    }
    if !(200..300).contains(&status) {
        return Err(refused(kind, status, &body));
    }
    parse_temporary_credentials(&body).map_err(|why| AmbientError {
        http_status: Some(status),
        ..failure(kind, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_shape_of_the_temporary_credential_json() {
        let wrapped = br#"{"credential":{"access":"AK1","secret":"SK1","securitytoken":"T1","expires_at":"2026-11-29T10:00:00.000000Z"}}"#;
        let c = parse_temporary_credentials(wrapped).unwrap();
        assert_eq!(
            (
                c.access_key_id.as_str(),
                c.secret_access_key.expose(),
                c.security_token.expose()
            ),
            ("AK1", "SK1", "T1")
        );
        assert_eq!(c.expires_at, "2026-11-29T10:00:00Z".parse().unwrap());
        let plural = br#"{"credentials":{"accessKeyId":"AK2","secretAccessKey":"SK2","securityToken":"T2","expiration":"2026-11-29T10:00:00Z"}}"#;
        assert_eq!(parse_temporary_credentials(plural).unwrap().access_key_id, "AK2");
        let top = br#"{"access_key_id":"AK3","secret_access_key":"SK3","security_token":"T3","expires_at":"2026-11-29T10:00:00Z"}"#;
        assert_eq!(
            parse_temporary_credentials(top).unwrap().security_token.expose(),
            "T3"
        );
        let e = parse_temporary_credentials(
            br#"{"credential":{"access":"AK","secret":"very-secret","expires_at":"x"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("security token") && !e.contains("very-secret"), "{e}");
        assert!(
            parse_temporary_credentials(b"<html>")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn refreshes_forty_minutes_early_or_at_half_life() {
        let t0: jiff::Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let hours = |h: i64| t0 + jiff::SignedDuration::from_hours(h);
        assert_eq!(
            refresh_at(t0, hours(24)),
            hours(24) - jiff::SignedDuration::from_mins(40)
        );
        let short = t0 + jiff::SignedDuration::from_mins(15);
        assert_eq!(
            refresh_at(t0, short),
            t0 + jiff::SignedDuration::from_secs(450),
            "a 15-minute session at half life"
        );
    }

    #[tokio::test]
    async fn a_failed_early_refresh_keeps_using_credentials_that_have_not_expired() {
        // A metadata endpoint nobody listens on: every fetch fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let source = AmbientSource::EcsMetadata {
            endpoint: Url::parse(&format!("http://{closed}")).unwrap(),
        };
        let ambient = AmbientCredentials::new(source);
        let now = jiff::Timestamp::now();
        let cached = |expires_in: i64| Cached {
            credentials: TemporaryCredentials {
                access_key_id: "AKCACHED".into(),
                secret_access_key: Sensitive::new("sk"),
                security_token: Sensitive::new("tok"),
                expires_at: now + jiff::SignedDuration::from_mins(expires_in),
            },
            refresh_at: now - jiff::SignedDuration::from_secs(1),
        };
        ambient.state.lock().unwrap().cached = Some(cached(30));
        crate::install_crypto_provider();
        let http = reqwest::Client::new();
        let access_key = |c: Credentials| match c {
            Credentials::AkSk { access_key_id, .. } => access_key_id,
            Credentials::Token(_) => String::new(),
        };
        // Due for refresh; the refresh fails; the cached ones still work for 30 minutes.
        assert_eq!(access_key(ambient.credentials(&http).await.unwrap()), "AKCACHED");
        assert_eq!(ambient.fetches(), 1);
        // While the fetch backoff runs, no new fetch, and still the cached ones.
        assert_eq!(access_key(ambient.credentials(&http).await.unwrap()), "AKCACHED");
        assert_eq!(ambient.fetches(), 1, "the source is not hammered");
        // Once they are about to expire, the failure shows.
        ambient.state.lock().unwrap().cached = Some(cached(0));
        assert!(ambient.credentials(&http).await.is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(fetch_backoff(1), Duration::from_secs(1));
        assert_eq!(fetch_backoff(4), Duration::from_secs(8));
        assert_eq!(fetch_backoff(40), MAX_FETCH_BACKOFF);
    }

    #[test]
    fn reads_the_sdk_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let pod = env(&[
            (
                "HC_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.2/v1/credentials",
            ),
            ("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ]);
        assert!(matches!(
            AmbientSource::from_env(AmbientKind::PodIdentity, &pod, None).unwrap(),
            AmbientSource::PodIdentity { .. }
        ));
        let none = env(&[]);
        let e = AmbientSource::from_env(AmbientKind::PodIdentity, &none, None).unwrap_err();
        assert!(e.contains("HC_CONTAINER_CREDENTIALS_FULL_URI"), "{e}");
        let oidc = env(&[
            ("HUAWEICLOUD_OIDC_PROVIDER_URN", "p"),
            ("HUAWEICLOUD_OIDC_AGENCY_URN", "a"),
            ("HUAWEICLOUD_OIDC_ID_TOKEN", "tok"),
        ]);
        let AmbientSource::Oidc {
            sts_endpoint,
            session_name,
            duration_seconds,
            id_token,
            ..
        } = AmbientSource::from_env(AmbientKind::Oidc, &oidc, None).unwrap()
        else {
            panic!("oidc")
        };
        assert_eq!(
            (sts_endpoint.as_str(), session_name.as_str(), duration_seconds),
            (
                "https://sts.cn-north-4.myhuaweicloud.com/",
                "oidc-sts-session",
                3600
            )
        );
        assert_eq!(id_token, IdToken::Literal(Sensitive::new("tok")));
        let ecs = AmbientSource::from_env(AmbientKind::EcsMetadata, &none, None).unwrap();
        assert_eq!(
            ecs,
            AmbientSource::EcsMetadata {
                endpoint: Url::parse(DEFAULT_METADATA_ENDPOINT).unwrap()
            }
        );
    }
}
