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
        FaultRule { desktop_id: Some(desktop_id.into()), operation: Some(operation), faults }
    }

    pub(crate) fn matches(&self, desktop_id: &str, operation: Operation) -> bool {
        self.desktop_id.as_deref().is_none_or(|d| d == desktop_id) && self.operation.is_none_or(|o| o == operation)
    }
}
