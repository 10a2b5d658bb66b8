//! Typed errors of the Workspace API and the parser for its error bodies.

use std::fmt;

use serde_json::Value;

/// The remote-assistance operations of the Workspace API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `DELETE .../remote-assistance`: 204 on success.
    CancelRemoteAssistance,
    /// `POST .../remote-assistance`: 200 with the new session.
    CreateRemoteAssistance,
    /// `GET .../remote-assistance`: 200 with the session's details.
    ShowDesktopRemoteAssistanceInfo,
    /// IAM `POST /v3/auth/tokens`: 201 with the token in `X-Subject-Token`.
    IamTokenRequest,
}

impl Operation {
    /// The operation's name in Huawei Cloud's API reference.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CancelRemoteAssistance => "CancelRemoteAssistance",
            Operation::CreateRemoteAssistance => "CreateRemoteAssistance",
            Operation::ShowDesktopRemoteAssistanceInfo => "ShowDesktopRemoteAssistanceInfo",
            Operation::IamTokenRequest => "KeystoneCreateUserTokenByPassword",
        }
    }

    /// The HTTP method of the operation.
    pub fn method(self) -> reqwest::Method {
        match self {
            Operation::CancelRemoteAssistance => reqwest::Method::DELETE,
            Operation::CreateRemoteAssistance => reqwest::Method::POST,
            Operation::ShowDesktopRemoteAssistanceInfo => reqwest::Method::GET,
            Operation::IamTokenRequest => reqwest::Method::POST,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of a cloud error body, parsed in the official SDKs' order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error_code` (or `code`), verbatim.
    pub code: Option<String>,
    /// `error_msg` (or `message`), or the raw body text when it was not JSON.
    pub message: Option<String>,
    /// `error_detail`, when present.
    pub detail: Option<String>,
    /// `encoded_authorization_message`, when present.
    pub encoded_authorization_message: Option<String>,
    /// `request_id` from the body (gateway errors), used when the header is missing.
    pub request_id: Option<String>,
    /// Whether the body was a JSON object carrying an error code or message.
    pub structured: bool,
}

/// How much of a non-JSON body is kept as the message.
const RAW_BODY_LIMIT: usize = 512;

/// Most bytes kept of a message or detail from an error body (the rest is cut visibly): a body
/// can be as large as the client reads, and these strings reach logs and status.
pub const MAX_ERROR_TEXT_BYTES: usize = 2048;

/// Most bytes kept of a code or request ID from an error body.
pub const MAX_ERROR_CODE_BYTES: usize = 256;

/// Most bytes kept of an encoded authorization message.
pub const MAX_ENCODED_MESSAGE_BYTES: usize = 8192;

impl ErrorBody {
    /// Cuts every field to its bound.
    fn bounded(self) -> ErrorBody {
        use crate::text::bounded_opt;
        ErrorBody {
            code: bounded_opt(self.code.as_deref(), MAX_ERROR_CODE_BYTES),
            message: bounded_opt(self.message.as_deref(), MAX_ERROR_TEXT_BYTES),
            detail: bounded_opt(self.detail.as_deref(), MAX_ERROR_TEXT_BYTES),
            encoded_authorization_message: bounded_opt(
                self.encoded_authorization_message.as_deref(),
                MAX_ENCODED_MESSAGE_BYTES,
            ),
            request_id: bounded_opt(self.request_id.as_deref(), MAX_ERROR_CODE_BYTES),
            structured: self.structured,
        }
    }
}

/// Parses an error body: `error_code`+`error_msg` at top level; else `code`+`message` at top
/// level; else the first nested object with either pair; else the raw text as the message.
/// Never fails: any body gives an [`ErrorBody`], each field bounded.
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    parse_unbounded(body).bounded()
}

fn parse_unbounded(body: &[u8]) -> ErrorBody {
    let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    if let Some(obj) = json {
        let mut parsed = ErrorBody {
            detail: string_field(&obj, "error_detail"),
            encoded_authorization_message: string_field(&obj, "encoded_authorization_message"),
            request_id: string_field(&obj, "request_id"),
            ..ErrorBody::default()
        };
        if let Some((code, message)) =
            pair(&obj, "error_code", "error_msg").or_else(|| pair(&obj, "code", "message"))
        {
            parsed.code = code;
            parsed.message = message;
            parsed.structured = true;
            return parsed;
        }
        for nested in obj.values().filter_map(Value::as_object) {
            if let Some((code, message)) =
                either(nested, "error_code", "error_msg").or_else(|| either(nested, "code", "message"))
            {
                parsed.code = code;
                parsed.message = message;
                parsed.detail = parsed.detail.or_else(|| string_field(nested, "error_detail"));
                parsed.encoded_authorization_message = parsed
                    .encoded_authorization_message
                    .or_else(|| string_field(nested, "encoded_authorization_message"));
                parsed.request_id = parsed.request_id.or_else(|| string_field(nested, "request_id"));
                parsed.structured = true;
                return parsed;
            }
        }
        // A top-level code alone (no message) is an error too: a 2xx carrying one is never a
        // success (contract, "Error codes worth knowing").
        if let Some(code) = string_field(&obj, "error_code").or_else(|| string_field(&obj, "code")) {
            parsed.code = Some(code);
            parsed.message = string_field(&obj, "error_msg").or_else(|| string_field(&obj, "message"));
            parsed.structured = true;
            return parsed;
        }
        // A JSON object with neither: fall through to the raw text.
    }
    ErrorBody {
        message: raw_message(body),
        ..ErrorBody::default()
    }
}

/// Both fields present (the SDKs' first two rules).
fn pair(
    obj: &serde_json::Map<String, Value>,
    code: &str,
    message: &str,
) -> Option<(Option<String>, Option<String>)> {
    match (string_field(obj, code), string_field(obj, message)) {
        (Some(c), Some(m)) => Some((Some(c), Some(m))),
        _ => None,
    }
}

/// Either field present (the nested-object rule).
fn either(
    obj: &serde_json::Map<String, Value>,
    code: &str,
    message: &str,
) -> Option<(Option<String>, Option<String>)> {
    match (string_field(obj, code), string_field(obj, message)) {
        (None, None) => None,
        (c, m) => Some((c, m)),
    }
}

/// A string field; numbers are kept as their text (some gateways send numeric codes).
fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The body as text, whitespace collapsed, cut to a readable length; None when empty.
fn raw_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return None;
    }
    if collapsed.chars().count() <= RAW_BODY_LIMIT {
        return Some(collapsed);
    }
    let cut: String = collapsed.chars().take(RAW_BODY_LIMIT).collect();
    Some(format!("{cut}…"))
}

/// The cloud answered a call with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The operation that failed.
    pub operation: Operation,
    /// HTTP status of the answer.
    pub http_status: u16,
    /// The parsed error body.
    pub body: ErrorBody,
    /// `X-Request-Id` of the answer (or the body's `request_id`).
    pub request_id: Option<String>,
}

/// Why a call got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The call did not complete in time.
    Timeout,
    /// No connection could be made (refused, reset, DNS, TLS).
    Connect,
    /// A redirect, which the API never sends (a proxy or a wrong endpoint does).
    Redirect,
    /// The answer said success but its body could not be read or decoded.
    Body,
    /// Anything else on the way.
    Other,
    /// Not sent, or cut off: this instance is not (or can no longer prove it is) the leader.
    NotLeader,
}

impl TransportKind {
    /// A short stable label (used in metrics and status).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Timeout => "Timeout",
            TransportKind::Connect => "ConnectionError",
            TransportKind::Redirect => "UnexpectedRedirect",
            TransportKind::Body => "InvalidResponseBody",
            TransportKind::Other => "TransportError",
            TransportKind::NotLeader => "NotLeader",
        }
    }
}

/// Any failure of a cloud call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The cloud answered with an error status or an error body.
    #[error("{}", describe_api(.0))]
    Api(Box<ApiError>),
    /// No usable answer arrived.
    #[error("{operation}: {}: {message}", kind.as_str())]
    Transport {
        /// The operation that failed.
        operation: Operation,
        /// What went wrong.
        kind: TransportKind,
        /// Details, without secrets.
        message: String,
        /// HTTP status, when an answer arrived (redirects, bad bodies).
        http_status: Option<u16>,
        /// `X-Request-Id` of the answer, when one arrived.
        request_id: Option<String>,
    },
    /// The operator could not build the request (bad endpoint, bad credentials).
    #[error("{operation}: {message}")]
    Request {
        /// The operation that could not be sent.
        operation: Operation,
        /// What is wrong.
        message: String,
    },
    /// The call was not sent: an earlier call with the same credentials failed in a way that
    /// would make this one fail too (and count against the key at the gateway). It classifies
    /// as its cause does.
    #[error("{operation}: not sent, {why}: {cause}")]
    Withheld {
        /// The operation that was not sent.
        operation: Operation,
        /// Why it was held back.
        why: String,
        /// The earlier failure.
        cause: Box<CloudError>,
    },
    /// The call was not sent: the operator's own identity gave no credentials for it.
    #[error("{operation}: not sent, {error}")]
    Source {
        /// The operation that was not sent.
        operation: Operation,
        /// Why there are no credentials.
        error: super::ambient::AmbientError,
    },
}

impl From<ApiError> for CloudError {
    fn from(error: ApiError) -> CloudError {
        CloudError::Api(Box::new(error))
    }
}

fn describe_api(e: &ApiError) -> String {
    let code = e
        .body
        .code
        .as_deref()
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    let message = e.body.message.as_deref().unwrap_or("(no message)");
    format!("{}: HTTP {}{code}: {message}", e.operation, e.http_status)
}

impl CloudError {
    /// The operation that failed.
    pub fn operation(&self) -> Operation {
        match self {
            CloudError::Api(e) => e.operation,
            CloudError::Transport { operation, .. }
            | CloudError::Request { operation, .. }
            | CloudError::Withheld { operation, .. }
            | CloudError::Source { operation, .. } => *operation,
        }
    }

    /// The request ID of the failed call, when an answer arrived.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CloudError::Api(e) => e.request_id.as_deref(),
            CloudError::Transport { request_id, .. } => request_id.as_deref(),
            CloudError::Request { .. } | CloudError::Withheld { .. } | CloudError::Source { .. } => None,
        }
    }

    /// The HTTP status, when an answer arrived.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            CloudError::Api(e) => Some(e.http_status),
            CloudError::Transport { http_status, .. } => *http_status,
            CloudError::Request { .. } | CloudError::Withheld { .. } => None,
            CloudError::Source { error, .. } => error.http_status,
        }
    }

    /// The cloud's error code, or for failures without one a stable label of the project's. A
    /// withheld call has its cause's code.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api(e) => e.body.code.as_deref(),
            CloudError::Transport { kind, .. } => Some(kind.as_str()),
            CloudError::Request { .. } => Some("InvalidRequest"),
            CloudError::Withheld { cause, .. } => cause.code(),
            CloudError::Source { error, .. } => error.code.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_error_code_and_msg_win() {
        let b = parse_error_body(
            br#"{"error_code":"WKS.00010032","error_msg":"desktop not found","code":"X","message":"Y","error_detail":"d","encoded_authorization_message":"enc","request_id":"r1"}"#,
        );
        assert_eq!(b.code.as_deref(), Some("WKS.00010032"));
        assert_eq!(b.message.as_deref(), Some("desktop not found"));
        assert_eq!(b.detail.as_deref(), Some("d"));
        assert_eq!(b.encoded_authorization_message.as_deref(), Some("enc"));
        assert_eq!(b.request_id.as_deref(), Some("r1"));
        assert!(b.structured);
    }

    #[test]
    fn code_and_message_when_error_code_pair_incomplete() {
        let b = parse_error_body(br#"{"error_code":"A","code":"APIGW.0308","message":"throttled"}"#);
        assert_eq!(b.code.as_deref(), Some("APIGW.0308"));
        assert_eq!(b.message.as_deref(), Some("throttled"));
    }

    #[test]
    fn a_top_level_code_alone_is_an_error() {
        // A 200 carrying only an error code (contract: some Workspace errors arrive with 200).
        let b = parse_error_body(br#"{"error_code":"WKS.00010109"}"#);
        assert_eq!(b.code.as_deref(), Some("WKS.00010109"));
        assert!(b.structured);
        let b = parse_error_body(br#"{"code":"WKS.00010110","status":"OPEN"}"#);
        assert_eq!(b.code.as_deref(), Some("WKS.00010110"));
        assert!(b.structured);
        let b = parse_error_body(br#"{"error_msg":"no code"}"#);
        assert!(!b.structured, "a message alone is no error shape the SDKs know");
    }

    #[test]
    fn nested_object_with_either_pair() {
        let b = parse_error_body(
            br#"{"error":{"code":"APIG.0301","message":"Incorrect IAM authentication information"}}"#,
        );
        assert_eq!(b.code.as_deref(), Some("APIG.0301"));
        assert_eq!(
            b.message.as_deref(),
            Some("Incorrect IAM authentication information")
        );
        let b = parse_error_body(br#"{"x":1,"error":{"error_code":"WKS.0001"}}"#);
        assert_eq!(b.code.as_deref(), Some("WKS.0001"));
        assert_eq!(b.message, None);
        assert!(b.structured);
    }

    #[test]
    fn non_json_bodies_become_the_message() {
        let b = parse_error_body(b"<html><body>\n  <h1>502 Bad Gateway</h1>\n</body></html>");
        assert_eq!(b.code, None);
        assert_eq!(
            b.message.as_deref(),
            Some("<html><body> <h1>502 Bad Gateway</h1> </body></html>")
        );
        assert!(!b.structured);
        assert_eq!(parse_error_body(b"").message, None);
        assert_eq!(
            parse_error_body(b"{\"error_code\":").message.as_deref(),
            Some("{\"error_code\":")
        );
        let huge = vec![b'x'; 100_000];
        assert!(parse_error_body(&huge).message.unwrap().chars().count() <= RAW_BODY_LIMIT + 1);
        let huge_json = format!(
            r#"{{"error_code":"WKS.1","error_msg":"{}"}}"#,
            "m".repeat(1 << 20)
        );
        let parsed = parse_error_body(huge_json.as_bytes());
        assert!(parsed.message.as_ref().unwrap().len() <= MAX_ERROR_TEXT_BYTES);
        assert!(parsed.message.unwrap().ends_with(crate::text::TRUNCATION_MARKER));
        assert_eq!(
            parse_error_body(&[0xff, 0xfe, b'a']).message.as_deref(),
            Some("\u{fffd}\u{fffd}a")
        );
    }

    #[test]
    fn json_without_error_fields_is_kept_raw() {
        let b = parse_error_body(br#"{"foo":"bar"}"#);
        assert!(!b.structured);
        assert_eq!(b.message.as_deref(), Some(r#"{"foo":"bar"}"#));
        let b = parse_error_body(br#"["error_code"]"#);
        assert!(!b.structured);
    }
}
