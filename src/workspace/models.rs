//! Response bodies of the remote-assistance operations. All fields are optional strings in the
//! contract; enums are kept verbatim (unknown values included).

use serde::Deserialize;

use super::credentials::Sensitive;

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

impl ShowResponse {
    /// Whether the cloud reports an assistance in progress (any status but CLOSE, with a space
    /// or a status at all).
    pub fn in_progress(&self) -> bool {
        match self.status.as_deref() {
            Some(STATUS_CLOSE) => false,
            Some(_) => true,
            None => self.share_space_id.is_some(),
        }
    }
}
