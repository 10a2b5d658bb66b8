//! Response bodies of the remote-assistance operations. All fields are optional strings in the
//! contract; enums are kept verbatim (unknown values included).

use serde::Deserialize;

use super::signing_credentials::Sensitive;

/// Body of CreateRemoteAssistance (POST, 200).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CreateResponse {
    /// The collaboration space created for the assistance.
    pub share_space_id: Option<String>,
    /// OPEN, CLOSE, WAIT_USER_CONFIRM, WAIT_USER_ACCESS, or a value not documented yet.
    pub status: Option<String>,
    /// The desktop.
    pub desktop_id: Option<String>,
    /// ADMIN_INITIATE or ENDUSER_INITIATE.
    pub initiator_type: Option<String>,
}

/// Body of ShowDesktopRemoteAssistanceInfo (GET, 200). The invitation code, password and share
/// links grant access to a person's desktop session: they are [`Sensitive`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ShowResponse {
    /// The collaboration space of the assistance.
    pub share_space_id: Option<String>,
    /// Invitation code (8 upper-case letters or digits). Secret.
    pub invitation_code: Option<Sensitive>,
    /// Name of the share space.
    pub share_space_name: Option<String>,
    /// Password of the share space. Secret.
    pub share_space_passwd: Option<Sensitive>,
    /// Link for the private network. Secret.
    pub private_share_link: Option<Sensitive>,
    /// Link for the internet. Secret.
    pub internet_share_link: Option<Sensitive>,
    /// Creation time, UTC, `yyyy-MM-ddTHH:mm:ssZ`.
    pub create_time: Option<String>,
    /// OPEN, CLOSE, WAIT_USER_CONFIRM, WAIT_USER_ACCESS, or a value not documented yet.
    pub status: Option<String>,
    /// Why the assistance failed, when it did.
    pub failed_reason: Option<String>,
}

/// The cloud status of a closed session.
pub const STATUS_CLOSE: &str = "CLOSE";

/// What a Show answer says about the desktop's session. Every field of the answer is optional
/// (contract, "Show (GET) response fields"), so only its `status` says whether a session is in
/// progress: an answer without one proves nothing either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// `status` is present and not `CLOSE` (known or not yet documented values alike).
    InProgress,
    /// `status` is exactly `CLOSE`.
    Closed,
    /// No `status` (or an empty one): no recognisable session.
    Unknown,
}

impl ShowResponse {
    /// The session state the answer reports, from its `status` alone.
    pub fn session_state(&self) -> SessionState {
        match self.status.as_deref().map(str::trim) {
            Some(STATUS_CLOSE) => SessionState::Closed,
            Some(s) if !s.is_empty() => SessionState::InProgress,
            _ => SessionState::Unknown,
        }
    }

    /// Whether the cloud reports an assistance in progress (a status other than CLOSE).
    pub fn in_progress(&self) -> bool {
        self.session_state() == SessionState::InProgress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_status_says_whether_a_session_is_in_progress() {
        let show = |status: Option<&str>, id: Option<&str>| ShowResponse {
            status: status.map(Into::into),
            share_space_id: id.map(Into::into),
            ..ShowResponse::default()
        };
        assert_eq!(show(Some("OPEN"), None).session_state(), SessionState::InProgress);
        assert_eq!(
            show(Some("WAIT_USER_CONFIRM"), None).session_state(),
            SessionState::InProgress
        );
        assert_eq!(
            show(Some("SOMETHING_NEW"), Some("s")).session_state(),
            SessionState::InProgress
        );
        assert_eq!(
            show(Some("CLOSE"), Some("s")).session_state(),
            SessionState::Closed
        );
        assert_eq!(
            show(None, Some("s")).session_state(),
            SessionState::Unknown,
            "an id alone says nothing"
        );
        assert_eq!(show(None, None).session_state(), SessionState::Unknown);
        assert_eq!(show(Some(""), None).session_state(), SessionState::Unknown);
    }
}
