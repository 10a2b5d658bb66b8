//! The one rule for releasing the finalizer: it comes off only on **evidence that the session
//! this resource held is over**. Pure, and tested as a table.
//!
//! The evidence, and where each piece comes from (`workspace-api.md`):
//! - the cancel answered 204 ("The three operations": only a 204 is a cancel's success);
//! - the cancel answered "not found": a 404 whose body is a Workspace (`WKS.*`) error, or a code
//!   the operator configured ("Error codes worth knowing"), as [`classify`] decides;
//! - for a session the cloud already reported closed: a Show without any error shape that says
//!   explicitly `status: CLOSE`, or that shows another session in progress (a different
//!   `share_space_id`, or one another resource holds), which proves this one ended;
//! - for a resource that never held a session on a desktop another resource holds: nothing of
//!   its own is open, and a cancel would end the holder's session;
//! - the deletion policy `Orphan`.
//!
//! Nothing else: an answer without a recognisable session, a 2xx carrying an error code, a
//! gateway's or proxy's 404 all leave the finalizer on, which a person sees, rather than a
//! session open, which nobody sees. Why not always a DELETE: what the cancel API answers when
//! no session is in progress is not documented (it may be a 400 with some code), so a
//! DELETE-only rule could strand every naturally closed resource; an explicit `CLOSE` from a
//! clean Show is the documented evidence for those.

use crate::workspace::{CloudError, Disposition, SessionState, ShowResponse, classify};

/// Why the session a resource held is over (or why it holds none to end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The cancel call answered 204.
    CancelConfirmed,
    /// The cancel call answered "not found" (a 404 Workspace error, or a configured code).
    NothingToCancel,
    /// A clean Show says `CLOSE`.
    ShownClosed,
    /// A clean Show shows another session in progress: this one ended.
    AnotherSession,
    /// This resource never held a session, and another resource holds the desktop.
    HeldByAnother,
    /// The deletion policy is Orphan: the session is left alone on purpose.
    Orphan,
}

impl Evidence {
    /// A stable CamelCase name, for Events and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Evidence::CancelConfirmed => "Cancelled",
            Evidence::NothingToCancel => "NothingToCancel",
            Evidence::ShownClosed => "ConfirmedClosed",
            Evidence::AnotherSession => "AnotherSessionInProgress",
            Evidence::HeldByAnother => "HeldByAnother",
            Evidence::Orphan => "Orphaned",
        }
    }
}

/// What to do after a clean Show of a session the cloud once reported closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterShow {
    /// The session is over: the finalizer may come off.
    Over(Evidence),
    /// The answer proves nothing, or shows this session in progress again: cancel it (the
    /// cancel's own answer is then the evidence).
    Cancel,
}

/// What a clean Show (one without any error shape: the client turns those into errors) proves
/// about the closed session `held_share_space` (its id, when known). `held_by_another`: another
/// resource holds the desktop now.
pub fn after_show(shown: &ShowResponse, held_share_space: Option<&str>, held_by_another: bool) -> AfterShow {
    match shown.session_state() {
        SessionState::Closed => AfterShow::Over(Evidence::ShownClosed),
        SessionState::InProgress => {
            let other_id = matches!((held_share_space, shown.share_space_id.as_deref()), (Some(held), Some(now)) if held != now);
            if other_id || held_by_another {
                AfterShow::Over(Evidence::AnotherSession)
            } else {
                AfterShow::Cancel
            }
        }
        SessionState::Unknown => AfterShow::Cancel,
    }
}

/// What the cancel's answer proves: the evidence, or None (the finalizer stays, the failure is
/// retried or shown).
pub fn after_cancel(answer: Result<(), &CloudError>, not_found_codes: &[String]) -> Option<Evidence> {
    match answer {
        Ok(()) => Some(Evidence::CancelConfirmed),
        Err(error) if classify(error, not_found_codes) == Disposition::NotFound => {
            Some(Evidence::NothingToCancel)
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{ApiError, Operation, TransportKind, parse_error_body};

    fn show(status: Option<&str>, id: Option<&str>) -> ShowResponse {
        ShowResponse {
            status: status.map(Into::into),
            share_space_id: id.map(Into::into),
            ..ShowResponse::default()
        }
    }

    fn api(status: u16, body: &str) -> CloudError {
        CloudError::from(ApiError {
            operation: Operation::CancelRemoteAssistance,
            http_status: status,
            body: parse_error_body(body.as_bytes()),
            request_id: None,
        })
    }

    #[test]
    fn a_clean_show_releases_only_on_close_or_another_session() {
        use AfterShow::*;
        let cases = [
            (
                show(Some("CLOSE"), Some("s1")),
                Some("s1"),
                false,
                Over(Evidence::ShownClosed),
            ),
            (
                show(Some("CLOSE"), None),
                Some("s1"),
                false,
                Over(Evidence::ShownClosed),
            ),
            (
                show(Some("CLOSE"), None),
                None,
                false,
                Over(Evidence::ShownClosed),
            ),
            (
                show(Some("OPEN"), Some("s2")),
                Some("s1"),
                false,
                Over(Evidence::AnotherSession),
            ),
            (
                show(Some("WAIT_USER_CONFIRM"), None),
                None,
                true,
                Over(Evidence::AnotherSession),
            ),
            (show(Some("OPEN"), Some("s1")), Some("s1"), false, Cancel),
            (show(Some("OPEN"), None), Some("s1"), false, Cancel),
            (show(Some("OPEN"), Some("s2")), None, false, Cancel),
            (show(Some("SOMETHING_NEW"), Some("s1")), Some("s1"), false, Cancel),
            (show(None, None), Some("s1"), false, Cancel),
            (show(None, Some("s1")), Some("s1"), false, Cancel),
            (show(None, None), None, true, Cancel),
            (show(Some(""), None), None, false, Cancel),
        ];
        for (shown, held, another, expected) in cases {
            assert_eq!(
                after_show(&shown, held, another),
                expected,
                "{shown:?} held {held:?} another {another}"
            );
        }
    }

    #[test]
    fn only_a_204_or_a_workspace_not_found_confirms_a_cancel() {
        let none: &[String] = &[];
        let transport = CloudError::Transport {
            operation: Operation::CancelRemoteAssistance,
            kind: TransportKind::Body,
            message: String::new(),
            http_status: Some(200),
            request_id: None,
        };
        let cases: Vec<(Result<(), CloudError>, Option<Evidence>)> = vec![
            (Ok(()), Some(Evidence::CancelConfirmed)),
            (
                Err(api(404, r#"{"error_code":"WKS.00010032","error_msg":"none"}"#)),
                Some(Evidence::NothingToCancel),
            ),
            (
                Err(api(404, r#"{"error_code":"WKS.00010032"}"#)),
                Some(Evidence::NothingToCancel),
            ),
            (
                Err(api(404, r#"{"error_code":"APIGW.0101","error_msg":"no api"}"#)),
                None,
            ),
            (Err(api(404, r#"{"code":404,"message":"Not Found"}"#)), None),
            (Err(api(404, "<html>404</html>")), None),
            (Err(api(404, "")), None),
            (Err(api(200, r#"{"error_code":"WKS.00010109"}"#)), None),
            (
                Err(api(400, r#"{"error_code":"WKS.0001","error_msg":"empty"}"#)),
                None,
            ),
            (
                Err(api(500, r#"{"error_code":"WKS.00000001","error_msg":"x"}"#)),
                None,
            ),
            (Err(transport), None),
        ];
        for (answer, expected) in &cases {
            assert_eq!(
                after_cancel(answer.as_ref().map(|_| ()), none),
                *expected,
                "{answer:?}"
            );
        }
        let configured = vec!["WKS.00010109".to_string()];
        assert_eq!(
            after_cancel(
                Err(&api(400, r#"{"error_code":"WKS.00010109","error_msg":"x"}"#)),
                &configured
            ),
            Some(Evidence::NothingToCancel)
        );
    }
}
