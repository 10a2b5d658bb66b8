//! The simulator's accounts and agencies (the contract's "Agencies: credentials of another
//! account"): credentials belong to an account, Workspace answers a credential only for its own
//! account's projects, and IAM's `POST /v3.0/OS-CREDENTIAL/securitytokens` (`assume_role`)
//! gives a caller of one account temporary credentials of another account's agency when that
//! agency exists and trusts the caller's account.
//!
//! Credentials assigned to no account are the simulator's single-account mode: any project.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

/// The code the simulator answers a call for another account's project with (HTTP 403), and
/// an agency that does not exist or does not trust the caller. The simulator's own: the
/// contract documents 403 for these operations, not its code.
pub const NOT_AUTHORIZED_CODE: &str = "SIM.0403";

/// One account (IAM domain) and its projects.
#[derive(Debug, Clone)]
pub struct Account {
    /// The domain's name.
    pub domain_name: String,
    /// Its projects.
    pub projects: HashSet<String>,
}

/// An agency: created in `delegating` (a domain ID), trusting `trusted` (a domain ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agency {
    /// The account that created it.
    pub delegating: String,
    /// Its name.
    pub name: String,
    /// The account it trusts.
    pub trusted: String,
}

/// Accounts, agencies, and whose each credential is.
#[derive(Default)]
pub struct Accounts {
    /// Accounts by domain ID.
    pub accounts: HashMap<String, Account>,
    /// Agencies.
    pub agencies: Vec<Agency>,
    /// The account of each credential (access key ID or IAM token).
    pub owners: HashMap<String, String>,
    /// The account the ambient identities' temporary credentials belong to.
    pub ambient_account: Option<String>,
    /// The session user of each access key issued through an agency.
    pub session_users: HashMap<String, String>,
    /// Temporary credentials issued through agencies.
    pub assumed: usize,
    /// assume_role requests refused.
    pub refused: usize,
}

/// A refusal: status, code, message.
pub type Refusal = (u16, &'static str, String);

impl Accounts {
    /// Whether the credential `caller` may act on `project`: its account owns the project (a
    /// credential of no account may act anywhere).
    pub fn authorize(&self, caller: &str, project: &str) -> Result<(), Refusal> {
        let Some(domain) = self.owners.get(caller) else {
            return Ok(());
        };
        let owns = self
            .accounts
            .get(domain)
            .is_some_and(|a| a.projects.contains(project));
        if owns {
            return Ok(());
        }
        Err((
            403,
            NOT_AUTHORIZED_CODE,
            format!("the credential is not authorized for project {project}"),
        ))
    }

    /// Checks an assume_role body from the credential `caller`; Ok: (delegating domain ID,
    /// duration in seconds, session user name).
    pub fn assume_role(&self, caller: &str, body: &[u8]) -> Result<(String, u32, Option<String>), Refusal> {
        let bad = |why: &str| (400, "SIM.0400", why.to_string());
        let request: Value = serde_json::from_slice(body).map_err(|_| bad("the body is not JSON"))?;
        let identity = &request["auth"]["identity"];
        if identity["methods"] != json!(["assume_role"]) {
            return Err(bad("auth.identity.methods must be [\"assume_role\"]"));
        }
        let role = &identity["assume_role"];
        let agency_name = role["agency_name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("assume_role.agency_name is required"))?;
        let delegating = match (role["domain_id"].as_str(), role["domain_name"].as_str()) {
            (Some(id), _) => id.to_string(),
            (None, Some(name)) => self
                .accounts
                .iter()
                .find(|(_, a)| a.domain_name == name)
                .map(|(id, _)| id.clone())
                .unwrap_or_else(|| format!("unknown:{name}")),
            (None, None) => return Err(bad("one of assume_role.domain_id or domain_name is required")),
        };
        let duration = match &role["duration_seconds"] {
            Value::Null => 900,
            v => v
                .as_u64()
                .filter(|d| (900..=86400).contains(d))
                .ok_or_else(|| bad("duration_seconds must be 900 to 86400"))?,
        };
        let session_user = match &role["session_user"]["name"] {
            Value::Null => None,
            v => {
                let name = v.as_str().unwrap_or_default();
                let valid = (5..=32).contains(&name.len())
                    && name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(bad(
                        "session_user.name must be 5 to 32 letters, digits, - or _, starting with a letter",
                    ));
                }
                Some(name.to_string())
            }
        };
        let caller_account = self.owners.get(caller).ok_or_else(|| {
            (
                403,
                NOT_AUTHORIZED_CODE,
                "the caller belongs to no account that an agency could trust".to_string(),
            )
        })?;
        let trusted = self
            .agencies
            .iter()
            .any(|a| a.delegating == delegating && a.name == agency_name && &a.trusted == caller_account);
        if !trusted {
            return Err((
                403,
                NOT_AUTHORIZED_CODE,
                format!(
                    "the agency {agency_name} does not exist in that account or does not trust the caller's account"
                ),
            ));
        }
        Ok((delegating, u32::try_from(duration).unwrap_or(900), session_user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        let mut a = Accounts::default();
        a.accounts.insert(
            "dA".into(),
            Account {
                domain_name: "alpha".into(),
                projects: ["pA".to_string()].into(),
            },
        );
        a.accounts.insert(
            "dB".into(),
            Account {
                domain_name: "beta".into(),
                projects: ["pB".to_string()].into(),
            },
        );
        a.agencies.push(Agency {
            delegating: "dB".into(),
            name: "assist".into(),
            trusted: "dA".into(),
        });
        a.owners.insert("AKA".into(), "dA".into());
        a
    }

    fn body(role: Value) -> Vec<u8> {
        json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": role}}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_agency_is_assumed_only_by_the_account_it_trusts() {
        let a = accounts();
        let ok = body(
            json!({"agency_name": "assist", "domain_name": "beta", "session_user": {"name": "assist-b"}}),
        );
        assert_eq!(
            a.assume_role("AKA", &ok),
            Ok(("dB".into(), 900, Some("assist-b".into())))
        );
        assert_eq!(a.assume_role("AKX", &ok).unwrap_err().0, 403, "no account");
        let wrong = body(json!({"agency_name": "other", "domain_id": "dB"}));
        assert_eq!(a.assume_role("AKA", &wrong).unwrap_err().0, 403);
        let short = body(json!({"agency_name": "assist", "domain_id": "dB", "duration_seconds": 60}));
        assert_eq!(a.assume_role("AKA", &short).unwrap_err().0, 400);
        let bad_user =
            body(json!({"agency_name": "assist", "domain_id": "dB", "session_user": {"name": "1x"}}));
        assert_eq!(a.assume_role("AKA", &bad_user).unwrap_err().0, 400);
    }

    #[test]
    fn a_credential_reaches_only_its_accounts_projects() {
        let a = accounts();
        assert!(a.authorize("AKA", "pA").is_ok());
        assert_eq!(a.authorize("AKA", "pB").unwrap_err().0, 403);
        assert!(a.authorize("AK-of-no-account", "pB").is_ok());
    }
}
