//! Classifies every cloud answer into what the operator should do next. Pure and unit-tested.
//!
//! Which answers mean "nothing there" decides when a finalizer comes off, so it rests only on
//! the contract (`workspace-api.md`, "Error codes worth knowing", after Huawei Cloud's published
//! Workspace error-code table): HTTP 404 means "resource not found" on these operations, and no
//! Workspace error code is documented as "not found" (`WKS.0001`, once thought to be one, is a
//! 400 "request message empty"). So by default the only "not found" is a **404 whose body parses
//! to a Workspace (`WKS.*`) error**. Gateway codes, HTML, empty bodies and foreign JSON (a
//! proxy's `{"code":404,...}`) never are; an operator can opt more codes in with
//! `--not-found-error-code`. A wrong guess here keeps a finalizer on, which a person sees,
//! rather than leaving a session open, which nobody sees.

use super::error::{CloudError, TransportKind};

/// Prefix of error codes that come from Workspace itself (not from the API gateway or a proxy).
pub const WORKSPACE_CODE_PREFIX: &str = "WKS.";

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The cloud confirmed there is nothing there (for a cancel: nothing left to cancel).
    NotFound,
    /// A passing failure: try again with backoff.
    Retry(RetryReason),
    /// The IAM token must be renewed (`*.0307`); renew and retry when the token is renewable.
    RenewToken,
    /// A person must act (credentials, permissions, endpoint, request); recheck slowly.
    NeedsHuman(HumanReason),
}

/// Why a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// 429 or `*.0308`.
    Throttled,
    /// 5xx.
    ServerError,
    /// Timeout, connection error, or an unreadable answer (proxies, truncated bodies).
    Transport,
}

/// Why a person must act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumanReason {
    /// 401 or `*.0301`: wrong AK/SK, unknown key, bad signature, expired token.
    Unauthenticated,
    /// 403: the identity may not do this.
    Forbidden,
    /// `*.0101` or a redirect: the endpoint does not serve this API.
    WrongEndpoint,
    /// Another 4xx, or an error code on a success status.
    Rejected,
    /// The request could not be built (bad credentials Secret or endpoint).
    InvalidRequest,
}

impl Disposition {
    /// A stable CamelCase reason for conditions, Events and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Disposition::NotFound => "NotFound",
            Disposition::Retry(RetryReason::Throttled) => "Throttled",
            Disposition::Retry(RetryReason::ServerError) => "CloudServerError",
            Disposition::Retry(RetryReason::Transport) => "CloudUnreachable",
            Disposition::RenewToken => "TokenExpired",
            Disposition::NeedsHuman(HumanReason::Unauthenticated) => "Unauthenticated",
            Disposition::NeedsHuman(HumanReason::Forbidden) => "Forbidden",
            Disposition::NeedsHuman(HumanReason::WrongEndpoint) => "WrongEndpoint",
            Disposition::NeedsHuman(HumanReason::Rejected) => "RequestRejected",
            Disposition::NeedsHuman(HumanReason::InvalidRequest) => "InvalidConfiguration",
        }
    }
}

/// Whether `code` is the gateway code `suffix` under either prefix (`APIGW.` or `APIG.`).
fn is_gateway_code(code: &str, suffix: &str) -> bool {
    code.strip_prefix("APIGW.").or_else(|| code.strip_prefix("APIG.")) == Some(suffix)
}

/// Whether `code` is a Workspace service error code (`WKS.*`).
pub fn is_workspace_code(code: &str) -> bool {
    code.starts_with(WORKSPACE_CODE_PREFIX) && code.len() > WORKSPACE_CODE_PREFIX.len()
}

/// Classifies a failed call. `extra_not_found` lists the codes an operator opted in as "not
/// found" (with any status); there are none built in.
pub fn classify(error: &CloudError, extra_not_found: &[String]) -> Disposition {
    let api = match error {
        CloudError::Transport {
            kind: TransportKind::Redirect,
            ..
        } => {
            return Disposition::NeedsHuman(HumanReason::WrongEndpoint);
        }
        CloudError::Transport { .. } => return Disposition::Retry(RetryReason::Transport),
        CloudError::Request { .. } => return Disposition::NeedsHuman(HumanReason::InvalidRequest),
        CloudError::Withheld { cause, .. } => return classify(cause, extra_not_found),
        // Never "not found": nothing was sent (the controller reports it as the source's failure).
        CloudError::Source { .. } => return Disposition::Retry(RetryReason::Transport),
        CloudError::Api(api) => api,
    };
    let status = api.http_status;
    let code = api.body.code.as_deref().unwrap_or("");
    let not_found_code = !code.is_empty() && extra_not_found.iter().any(|c| c == code);

    if status == 429 || is_gateway_code(code, "0308") {
        return Disposition::Retry(RetryReason::Throttled);
    }
    if is_gateway_code(code, "0307") {
        return Disposition::RenewToken;
    }
    if status == 401 || is_gateway_code(code, "0301") {
        return Disposition::NeedsHuman(HumanReason::Unauthenticated);
    }
    if status == 403 {
        return Disposition::NeedsHuman(HumanReason::Forbidden);
    }
    if is_gateway_code(code, "0101") {
        return Disposition::NeedsHuman(HumanReason::WrongEndpoint);
    }
    if not_found_code {
        return Disposition::NotFound;
    }
    if status == 404 {
        // Only Workspace's own JSON error is trusted to mean "not found"; an HTML, empty or
        // foreign-JSON 404, or another gateway code, comes from something in between, and
        // trusting it would drop a cancel.
        return if api.body.structured && is_workspace_code(code) {
            Disposition::NotFound
        } else {
            Disposition::Retry(RetryReason::Transport)
        };
    }
    if status >= 500 {
        return Disposition::Retry(RetryReason::ServerError);
    }
    if status == 408 || status == 425 {
        return Disposition::Retry(RetryReason::Transport);
    }
    if (400..500).contains(&status) && !api.body.structured {
        // A 4xx without the cloud's error body was written by something in between.
        return Disposition::Retry(RetryReason::Transport);
    }
    Disposition::NeedsHuman(HumanReason::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::error::{ApiError, ErrorBody, Operation};

    fn api(status: u16, code: Option<&str>, structured: bool) -> CloudError {
        CloudError::from(ApiError {
            operation: Operation::CancelRemoteAssistance,
            http_status: status,
            body: ErrorBody {
                code: code.map(str::to_string),
                structured,
                ..ErrorBody::default()
            },
            request_id: None,
        })
    }

    fn transport(kind: TransportKind) -> CloudError {
        CloudError::Transport {
            operation: Operation::CancelRemoteAssistance,
            kind,
            message: String::new(),
            http_status: None,
            request_id: None,
        }
    }

    #[test]
    fn table() {
        use Disposition::*;
        use HumanReason::*;
        use RetryReason::*;
        let none: &[String] = &[];
        let cases: Vec<(CloudError, Disposition)> = vec![
            (api(404, Some("WKS.00010032"), true), NotFound),
            (api(404, None, false), Retry(Transport)),
            (api(404, Some("404"), true), Retry(Transport)),
            (api(404, Some("WKS."), true), Retry(Transport)),
            (api(404, Some("APIGW.0404"), true), Retry(Transport)),
            (api(404, Some("APIGW.0101"), true), NeedsHuman(WrongEndpoint)),
            (api(404, Some("APIG.0101"), true), NeedsHuman(WrongEndpoint)),
            (api(400, Some("WKS.0001"), true), NeedsHuman(Rejected)),
            (api(200, Some("WKS.0001"), true), NeedsHuman(Rejected)),
            (api(200, Some("WKS.00010109"), true), NeedsHuman(Rejected)),
            (api(400, Some("WKS.00010099"), true), NeedsHuman(Rejected)),
            (api(400, Some("APIGW.0201"), true), NeedsHuman(Rejected)),
            (api(413, None, false), Retry(Transport)),
            (api(429, Some("APIGW.0308"), true), Retry(Throttled)),
            (api(429, None, false), Retry(Throttled)),
            (api(400, Some("APIG.0308"), true), Retry(Throttled)),
            (api(401, Some("APIGW.0301"), true), NeedsHuman(Unauthenticated)),
            (api(401, None, false), NeedsHuman(Unauthenticated)),
            (api(400, Some("APIG.0301"), true), NeedsHuman(Unauthenticated)),
            (api(401, Some("APIGW.0307"), true), RenewToken),
            (api(401, Some("APIG.0307"), true), RenewToken),
            (api(403, Some("WKS.00010002"), true), NeedsHuman(Forbidden)),
            (api(403, None, false), NeedsHuman(Forbidden)),
            (api(500, Some("WKS.00000001"), true), Retry(ServerError)),
            (api(502, None, false), Retry(ServerError)),
            (api(503, None, false), Retry(ServerError)),
            (api(408, None, false), Retry(Transport)),
            (api(200, Some("WKS.9999"), true), NeedsHuman(Rejected)),
            (transport(TransportKind::Timeout), Retry(Transport)),
            (transport(TransportKind::Connect), Retry(Transport)),
            (transport(TransportKind::Body), Retry(Transport)),
            (transport(TransportKind::Redirect), NeedsHuman(WrongEndpoint)),
            (
                CloudError::Request {
                    operation: Operation::CancelRemoteAssistance,
                    message: String::new(),
                },
                NeedsHuman(InvalidRequest),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error, none), expected, "{error:?}");
        }
    }

    #[test]
    fn operator_supplied_not_found_codes() {
        let extra = vec!["WKS.00010032".to_string()];
        assert_eq!(
            classify(&api(400, Some("WKS.00010032"), true), &extra),
            Disposition::NotFound
        );
        assert_eq!(
            classify(&api(400, Some("WKS.00010032"), true), &[]),
            Disposition::NeedsHuman(HumanReason::Rejected)
        );
        // An empty configured code never matches a body without a code.
        assert_eq!(
            classify(&api(400, None, false), &["".to_string()]),
            Disposition::Retry(RetryReason::Transport)
        );
    }
}
