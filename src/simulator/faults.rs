//! Faults the simulator injects on demand.

use std::time::Duration;

use crate::workspace::Operation;

/// One injected misbehaviour, used in place of (or before) the normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a JSON error body (`error_code`, `error_msg`, ...).
    Error {
        /// HTTP status.
        status: u16,
        /// `error_code`.
        code: String,
        /// `error_msg`.
        message: String,
        /// `error_detail`, when set.
        detail: Option<String>,
        /// `encoded_authorization_message`, when set.
        encoded_authorization_message: Option<String>,
    },
    /// Answer with this status, content type and body as they are (HTML pages, truncated JSON,
    /// empty or huge bodies, redirects with a Location header).
    Raw {
        /// HTTP status.
        status: u16,
        /// Content-Type header.
        content_type: String,
        /// The body.
        body: Vec<u8>,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Wait this long, then answer normally (or let the client time out).
    Delay(Duration),
    /// Close the connection without an answer.
    Drop,
    /// Do what the request asks (a cancel closes the session), then close the connection
    /// without an answer: the reply is lost after the state changed.
    DropAfterApplying,
    /// Start a session for the desktop as its user would, just before the request is served
    /// (a Create then meets a session already in progress).
    SessionStartedMeanwhile,
    /// Serve normally, but leave these fields out of the JSON answer: every field of the
    /// Create and Show answers is optional in the contract.
    OmitFields(Vec<String>),
}

impl Fault {
    /// A JSON error answer.
    pub fn error(status: u16, code: &str, message: &str) -> Fault {
        Fault::Error {
            status,
            code: code.into(),
            message: message.into(),
            detail: None,
            encoded_authorization_message: None,
        }
    }

    /// An HTML error page, as proxies send.
    pub fn html(status: u16) -> Fault {
        Fault::Raw {
            status,
            content_type: "text/html".into(),
            body: format!("<html><head><title>{status}</title></head><body><h1>{status} Error</h1><hr>proxy</body></html>").into_bytes(),
            headers: vec![],
        }
    }

    /// A 404 with JSON that is not Workspace's (a proxy's or another framework's).
    pub fn foreign_json_404() -> Fault {
        Fault::Raw {
            status: 404,
            content_type: "application/json".into(),
            body: br#"{"code":404,"message":"Not Found"}"#.to_vec(),
            headers: vec![],
        }
    }

    /// A redirect to another host.
    pub fn redirect(status: u16, location: &str) -> Fault {
        Fault::Raw {
            status,
            content_type: "text/plain".into(),
            body: Vec::new(),
            headers: vec![("Location".into(), location.into())],
        }
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Only this desktop (any when None).
    pub desktop_id: Option<String>,
    /// Only this operation (any when None).
    pub operation: Option<Operation>,
    /// The faults to serve, in order, one per matching request.
    pub faults: Vec<Fault>,
}

impl FaultRule {
    /// Faults for one desktop and operation.
    pub fn new(desktop_id: &str, operation: Operation, faults: Vec<Fault>) -> Self {
        FaultRule {
            desktop_id: Some(desktop_id.into()),
            operation: Some(operation),
            faults,
        }
    }

    pub(crate) fn matches(&self, desktop_id: &str, operation: Operation) -> bool {
        self.desktop_id.as_deref().is_none_or(|d| d == desktop_id)
            && self.operation.is_none_or(|o| o == operation)
    }
}

/// Parses a fault rule written as comma-separated `key=value` pairs, for `simulate --fault`:
///
/// - `operation=cancel|create|show|*` (default `*`), `desktop=ID|*` (default `*`),
/// - `kind=error|html|drop|drop-after-applying|session-started|foreign-404|delay|redirect|omit`
///   (default `error`), `times=N` (default 1),
/// - for `error`: `status=N` (default 500), `code=CODE` (default `WKS.00000001`), `message=TEXT`;
///   for `html`: `status=N` (default 502); for `delay`: `delay=DURATION` (e.g. `2s`);
///   for `redirect`: `status=N` (default 302), `location=URL`; for `omit`: `fields=A+B` (the
///   answer's fields to leave out).
///
/// Example: `operation=cancel,status=503,code=APIGW.0308,times=3`.
pub fn parse_fault_rule(spec: &str) -> Result<FaultRule, String> {
    let mut fields = std::collections::HashMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        fields.insert(k.trim().to_string(), v.trim().to_string());
    }
    let get = |k: &str| fields.get(k).map(String::as_str);
    let operation = match get("operation").unwrap_or("*") {
        "*" => None,
        "cancel" => Some(Operation::CancelRemoteAssistance),
        "create" => Some(Operation::CreateRemoteAssistance),
        "show" => Some(Operation::ShowDesktopRemoteAssistanceInfo),
        other => return Err(format!("operation {other:?} is not cancel, create, show or *")),
    };
    let desktop_id = get("desktop").filter(|d| *d != "*").map(str::to_string);
    let times: usize = get("times")
        .unwrap_or("1")
        .parse()
        .map_err(|_| "times must be a whole number".to_string())?;
    let status = |default: u16| -> Result<u16, String> {
        get("status").map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("status {s:?} is not a number"))
        })
    };
    let fault = match get("kind").unwrap_or("error") {
        "error" => Fault::error(
            status(500)?,
            get("code").unwrap_or("WKS.00000001"),
            get("message").unwrap_or("Injected fault"),
        ),
        "html" => Fault::html(status(502)?),
        "drop" => Fault::Drop,
        "drop-after-applying" => Fault::DropAfterApplying,
        "session-started" => Fault::SessionStartedMeanwhile,
        "foreign-404" => Fault::foreign_json_404(),
        "delay" => Fault::Delay(crate::cli::parse_duration(
            get("delay").ok_or("kind=delay needs delay=DURATION")?,
        )?),
        "redirect" => Fault::redirect(status(302)?, get("location").unwrap_or("https://example.com/")),
        "omit" => Fault::OmitFields(
            get("fields")
                .ok_or("kind=omit needs fields=NAME+NAME")?
                .split('+')
                .map(str::to_string)
                .collect(),
        ),
        other => {
            return Err(format!(
                "kind {other:?} is not error, html, drop, drop-after-applying, session-started, foreign-404, delay, redirect or omit"
            ));
        }
    };
    let known = [
        "operation",
        "desktop",
        "times",
        "status",
        "code",
        "message",
        "kind",
        "delay",
        "location",
        "fields",
    ];
    if let Some(k) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?} (known: {})", known.join(", ")));
    }
    Ok(FaultRule {
        desktop_id,
        operation,
        faults: vec![fault; times],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let r = parse_fault_rule("operation=cancel,status=503,code=APIGW.0308,times=3").unwrap();
        assert_eq!(r.operation, Some(Operation::CancelRemoteAssistance));
        assert_eq!(r.desktop_id, None);
        assert_eq!(
            r.faults,
            vec![Fault::error(503, "APIGW.0308", "Injected fault"); 3]
        );
        let r = parse_fault_rule("desktop=d1,kind=delay,delay=2s").unwrap();
        assert_eq!(r.faults, vec![Fault::Delay(std::time::Duration::from_secs(2))]);
        assert_eq!(parse_fault_rule("kind=drop").unwrap().faults, vec![Fault::Drop]);
        assert_eq!(
            parse_fault_rule("kind=drop-after-applying").unwrap().faults,
            vec![Fault::DropAfterApplying]
        );
        assert_eq!(
            parse_fault_rule("operation=create,kind=session-started")
                .unwrap()
                .faults,
            vec![Fault::SessionStartedMeanwhile]
        );
        assert_eq!(
            parse_fault_rule("kind=foreign-404").unwrap().faults,
            vec![Fault::foreign_json_404()]
        );
        assert_eq!(
            parse_fault_rule("kind=omit,fields=share_space_id+status")
                .unwrap()
                .faults,
            vec![Fault::OmitFields(vec!["share_space_id".into(), "status".into()])]
        );
        assert!(parse_fault_rule("operation=reboot").is_err());
        assert!(parse_fault_rule("status=abc").is_err());
        assert!(parse_fault_rule("colour=red").is_err());
    }
}
