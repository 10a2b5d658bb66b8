//! The HTTP client of the Workspace remote-assistance API.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use super::error::{ApiError, CloudError, Operation, TransportKind, parse_error_body};
use super::models::{CreateResponse, ShowResponse};
use super::signer::{self, SigningRequest};
use super::signing_credentials::Credentials;

/// Most of a response body the client reads; the rest is dropped (huge bodies are never useful).
/// The same bound holds for IAM, STS and metadata answers ([`read_limited`]).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Settings of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Limit on a whole call, connect to last byte.
    pub timeout: Duration,
    /// Limit on connecting.
    pub connect_timeout: Duration,
    /// Extra trusted CA certificates (PEM bundle), added to the platform's roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Accept any server certificate. Only through an explicit operator flag, logged loudly.
    pub insecure_skip_tls_verify: bool,
    /// Who is calling, added to the User-Agent (`workspace-assist/VERSION (INSTANCE)`), so that
    /// the cloud's side can tell replicas apart.
    pub instance: Option<String>,
    /// The proxy every call goes through, when the operator's flag names one. The environment's
    /// `HTTP(S)_PROXY` is never used: a proxy sees the tokens of `http://` endpoints.
    pub proxy: Option<Url>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            extra_ca_pem: None,
            insecure_skip_tls_verify: false,
            instance: None,
            proxy: None,
        }
    }
}

/// The desktop whose remote assistance a call is about, and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL of the Workspace endpoint.
    pub endpoint: Url,
    /// Project ID.
    pub project_id: String,
    /// Desktop ID.
    pub desktop_id: String,
}

impl Target {
    /// The operation's path, decoded (segments are encoded when the URL is built).
    fn decoded_path(&self) -> String {
        let base = self.endpoint.path().trim_end_matches('/');
        format!(
            "{base}/v2/{}/desktops/{}/remote-assistance",
            self.project_id, self.desktop_id
        )
    }

    /// The full URL, each path segment percent-encoded the way the signer encodes it.
    fn url(&self) -> Url {
        let mut url = self.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_string();
        let path = format!(
            "{base}/v2/{}/desktops/{}/remote-assistance",
            signer::percent_encode(&self.project_id),
            signer::percent_encode(&self.desktop_id)
        );
        url.set_path(&path);
        url.set_query(None);
        url
    }
}

/// The endpoint for a region (`https://workspace.{region}.myhuaweicloud.com`) unless an explicit
/// endpoint URL overrides it.
pub fn resolve_endpoint(region: Option<&str>, endpoint: Option<&str>) -> Result<Url, String> {
    if let Some(e) = endpoint {
        let url = Url::parse(e).map_err(|err| format!("endpoint {e:?} is not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "endpoint {e:?} must be an absolute http:// or https:// URL"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("endpoint {e:?} must not have a query or fragment"));
        }
        return Ok(url);
    }
    match region {
        Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Url::parse(&format!("https://workspace.{r}.myhuaweicloud.com"))
                .map_err(|err| format!("region {r:?} gives no valid endpoint: {err}"))
        }
        Some(r) => Err(format!("region {r:?} is not a region ID")),
        None => Err("one of region or endpoint is required".to_string()),
    }
}

/// The User-Agent: the project and version, and the instance when known (only characters a
/// header value may hold).
fn user_agent(instance: Option<&str>) -> String {
    let base = concat!("workspace-assist/", env!("CARGO_PKG_VERSION"));
    match instance.map(|i| {
        i.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(253)
            .collect::<String>()
    }) {
        Some(i) if !i.is_empty() => format!("{base} ({i})"),
        _ => base.to_string(),
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The decoded body.
    pub value: T,
    /// `X-Request-Id` of the answer.
    pub request_id: Option<String>,
    /// HTTP status of the answer.
    pub http_status: u16,
}

/// Client of the Workspace remote-assistance API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkspaceClient {
    http: reqwest::Client,
}

/// Why the HTTP client could not be built (bad settings of the operator, never of a resource).
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `--proxy` is not a proxy URL reqwest accepts.
    #[error("the proxy {proxy}: {source}")]
    Proxy {
        /// The proxy as configured.
        proxy: String,
        /// reqwest's reason.
        #[source]
        source: reqwest::Error,
    },
    /// The extra CA bundle is not PEM certificates.
    #[error("reading the CA bundle: {0}")]
    CaBundle(#[source] reqwest::Error),
    /// The TLS or HTTP stack refused the settings.
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl WorkspaceClient {
    /// Builds a client. Certificates are verified unless `insecure_skip_tls_verify` is set;
    /// redirects are never followed (the API sends none).
    pub fn new(options: &ClientOptions) -> Result<Self, ClientBuildError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(user_agent(options.instance.as_deref()))
            .no_proxy()
            .tls_backend_rustls();
        if let Some(proxy) = &options.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|source| {
                ClientBuildError::Proxy {
                    proxy: proxy.to_string(),
                    source,
                }
            })?);
        }
        if let Some(pem) = &options.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(ClientBuildError::CaBundle)?;
            builder = builder.tls_certs_merge(certs);
        }
        if options.insecure_skip_tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(ClientBuildError::Build)?;
        Ok(WorkspaceClient { http })
    }

    /// The underlying HTTP client (shared with the IAM token requests).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// CancelRemoteAssistance: `DELETE`, 204 on success. Only a 204 confirms the cancel: another
    /// success status (a proxy's page, an empty 200) is retried, and a cancel that did happen
    /// then answers "not found".
    pub async fn cancel(&self, target: &Target, credentials: &Credentials) -> Result<Answer<()>, CloudError> {
        let raw = self
            .call(Operation::CancelRemoteAssistance, target, credentials)
            .await?;
        if raw.status != 204 {
            return Err(CloudError::Transport {
                operation: Operation::CancelRemoteAssistance,
                kind: TransportKind::Body,
                message: format!("HTTP {} instead of 204: the cancel is not confirmed", raw.status),
                http_status: Some(raw.status),
                request_id: raw.request_id,
            });
        }
        Ok(Answer {
            value: (),
            request_id: raw.request_id,
            http_status: raw.status,
        })
    }

    /// ShowDesktopRemoteAssistanceInfo: `GET`, 200 with the session's details.
    pub async fn show(
        &self,
        target: &Target,
        credentials: &Credentials,
    ) -> Result<Answer<ShowResponse>, CloudError> {
        let raw = self
            .call(Operation::ShowDesktopRemoteAssistanceInfo, target, credentials)
            .await?;
        raw.decode(Operation::ShowDesktopRemoteAssistanceInfo)
    }

    /// CreateRemoteAssistance: `POST` (no body), 200 with the new session.
    pub async fn create(
        &self,
        target: &Target,
        credentials: &Credentials,
    ) -> Result<Answer<CreateResponse>, CloudError> {
        let raw = self
            .call(Operation::CreateRemoteAssistance, target, credentials)
            .await?;
        raw.decode(Operation::CreateRemoteAssistance)
    }

    async fn call(
        &self,
        operation: Operation,
        target: &Target,
        credentials: &Credentials,
    ) -> Result<RawAnswer, CloudError> {
        // A URL collapses "." and ".." segments: the path sent would not be the path signed,
        // nor the desktop meant.
        for (what, id) in [
            ("project ID", &target.project_id),
            ("desktop ID", &target.desktop_id),
        ] {
            if id == "." || id == ".." || id.is_empty() {
                return Err(CloudError::Request {
                    operation,
                    message: format!("the {what} {id:?} is not an ID"),
                });
            }
        }
        let url = target.url();
        let headers = request_headers(operation, target, &url, credentials, jiff::Timestamp::now())?;
        let response = self
            .http
            .request(operation.method(), url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| transport_error(operation, &e, None, None))?;
        let status = response.status().as_u16();
        let request_id = request_id(response.headers());
        let body = read_limited(response)
            .await
            .map_err(|e| transport_error(operation, &e, Some(status), request_id.clone()))?;

        if (300..400).contains(&status) {
            return Err(CloudError::Transport {
                operation,
                kind: TransportKind::Redirect,
                message: format!(
                    "the endpoint answered HTTP {status} (a redirect); the Workspace API sends none"
                ),
                http_status: Some(status),
                request_id,
            });
        }
        // Any error shape counts, on a success status too: some Workspace errors arrive with
        // HTTP 200 (contract, "Error codes worth knowing"), and a 2xx carrying one is never a
        // cancel or a "no session".
        let parsed = parse_error_body(&body);
        if status >= 400 || parsed.structured {
            let request_id = request_id.or_else(|| parsed.request_id.clone());
            return Err(CloudError::from(ApiError {
                operation,
                http_status: status,
                body: parsed,
                request_id,
            }));
        }
        if status < 200 {
            return Err(CloudError::Transport {
                operation,
                kind: TransportKind::Other,
                message: format!("unexpected HTTP {status}"),
                http_status: Some(status),
                request_id,
            });
        }
        Ok(RawAnswer {
            status,
            request_id,
            body,
        })
    }
}

/// Builds the headers of a call, signing them for AK/SK credentials.
fn request_headers(
    operation: Operation,
    target: &Target,
    url: &Url,
    credentials: &Credentials,
    now: jiff::Timestamp,
) -> Result<HeaderMap, CloudError> {
    let bad = |message: String| CloudError::Request { operation, message };
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad("the endpoint has no host".into())),
    };
    let mut pairs: Vec<(String, String)> = vec![
        ("Content-Type".into(), "application/json".into()),
        ("Host".into(), host),
        ("X-Project-Id".into(), target.project_id.clone()),
    ];
    match credentials {
        Credentials::AkSk {
            access_key_id,
            secret_access_key,
            security_token,
        } => {
            let date = now.strftime(signer::DATE_FORMAT).to_string();
            pairs.push((signer::DATE_HEADER.into(), date.clone()));
            if let Some(token) = security_token {
                pairs.push(("X-Security-Token".into(), token.expose().to_string()));
            }
            let method = operation.method();
            let req = SigningRequest {
                method: method.as_str(),
                path: &target.decoded_path(),
                query: &[],
                headers: &pairs,
                body: b"",
            };
            let auth = signer::authorization(access_key_id, secret_access_key.expose(), &date, &req);
            pairs.push(("Authorization".into(), auth));
        }
        Credentials::Token(token) => pairs.push(("X-Auth-Token".into(), token.expose().to_string())),
    }
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| bad(format!("header name: {e}")))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            bad(format!(
                "the {name} header would hold characters HTTP does not allow"
            ))
        })?;
        if matches!(
            name.as_str(),
            "authorization" | "x-auth-token" | "x-security-token"
        ) {
            value.set_sensitive(true);
        }
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer's body.
pub(crate) async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

fn transport_error(
    operation: Operation,
    e: &reqwest::Error,
    http_status: Option<u16>,
    request_id: Option<String>,
) -> CloudError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else if e.is_body() || e.is_decode() {
        TransportKind::Body
    } else {
        TransportKind::Other
    };
    // The URL holds only the endpoint and the IDs; reqwest's message never holds headers.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CloudError::Transport {
        operation,
        kind,
        message,
        http_status,
        request_id,
    }
}

/// A 2xx answer before decoding.
struct RawAnswer {
    status: u16,
    request_id: Option<String>,
    body: Vec<u8>,
}

/// The answer's `X-Request-Id`, the ID Huawei's support asks for.
pub(crate) fn request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl RawAnswer {
    /// Decodes a JSON body. An empty body is not the API's answer (it sends `{}` at least), so
    /// it is an error to retry rather than "nothing there".
    fn decode<T: serde::de::DeserializeOwned>(self, operation: Operation) -> Result<Answer<T>, CloudError> {
        match serde_json::from_slice::<T>(&self.body) {
            Ok(value) => Ok(Answer {
                value,
                request_id: self.request_id,
                http_status: self.status,
            }),
            Err(e) => Err(CloudError::Transport {
                operation,
                kind: TransportKind::Body,
                message: format!(
                    "HTTP {} with a body that is not the documented JSON: {e}",
                    self.status
                ),
                http_status: Some(self.status),
                request_id: self.request_id,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            resolve_endpoint(Some("cn-north-4"), None).unwrap().as_str(),
            "https://workspace.cn-north-4.myhuaweicloud.com/"
        );
        assert_eq!(
            resolve_endpoint(Some("cn-north-4"), Some("http://127.0.0.1:8080"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/"
        );
        assert!(resolve_endpoint(None, Some("not a url")).is_err());
        assert!(resolve_endpoint(None, Some("ftp://x")).is_err());
        assert!(resolve_endpoint(Some("cn/north"), None).is_err());
        assert!(resolve_endpoint(None, None).is_err());
    }

    #[test]
    fn url_and_signed_path_agree() {
        let t = Target {
            endpoint: Url::parse("https://proxy.example.com/workspace/").unwrap(),
            project_id: "p 1".into(),
            desktop_id: "d/2".into(),
        };
        assert_eq!(
            t.url().as_str(),
            "https://proxy.example.com/workspace/v2/p%201/desktops/d%2F2/remote-assistance"
        );
        // Like the official SDKs, the signature covers the decoded path split on '/', so an ID
        // holding a '/' is signed as two segments.
        assert_eq!(
            signer::canonical_uri(&t.decoded_path()),
            "/workspace/v2/p%201/desktops/d/2/remote-assistance/"
        );
    }

    #[test]
    fn signed_headers_cover_host_date_and_project() {
        let t = Target {
            endpoint: Url::parse("http://127.0.0.1:9000").unwrap(),
            project_id: "0bec5db98280d2d02fd6c00c2de791ce".into(),
            desktop_id: "a130ab3a-72bf-4b71-baa9-af4987c8e338".into(),
        };
        let creds = Credentials::AkSk {
            access_key_id: "AK".into(),
            secret_access_key: crate::workspace::Sensitive::new("SK"),
            security_token: Some(crate::workspace::Sensitive::new("TOKEN")),
        };
        let now: jiff::Timestamp = "2019-11-15T03:36:55Z".parse().unwrap();
        let h = request_headers(Operation::CancelRemoteAssistance, &t, &t.url(), &creds, now).unwrap();
        assert_eq!(h["x-sdk-date"], "20191115T033655Z");
        assert_eq!(h["host"], "127.0.0.1:9000");
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("SDK-HMAC-SHA256 Access=AK, SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, Signature="),
            "{auth}"
        );
        assert!(h["authorization"].is_sensitive());
    }
}
