//! Temporary credentials of another account's agency: IAM's
//! `POST /v3.0/OS-CREDENTIAL/securitytokens` with `assume_role` (the contract's "Agencies:
//! credentials of another account"; the SDKs' `CreateTemporaryAccessKeyByAgency`), signed with
//! the operator's own AK/SK (temporary ones with `X-Security-Token`) or sent with its IAM token.

use serde_json::json;
use url::Url;

use super::ambient::{
    AmbientError, AmbientKind, TemporaryCredentials, failure, parse_temporary_credentials, refused, send,
};
use super::signer::{self, SigningRequest};
use super::signing_credentials::Credentials;

/// The path of IAM's temporary-credential API.
pub const SECURITY_TOKENS_PATH: &str = "/v3.0/OS-CREDENTIAL/securitytokens";

/// The global IAM endpoint (the API takes the global or a regional endpoint).
pub const GLOBAL_IAM_ENDPOINT: &str = "https://iam.myhuaweicloud.com";

/// The delegating account: by ID or by name (IAM takes either).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DelegatingAccount {
    /// `domain_id`.
    Id(String),
    /// `domain_name`.
    Name(String),
}

/// What to ask IAM for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgencyRequest {
    /// IAM's endpoint.
    pub iam_endpoint: Url,
    /// The account that created the agency.
    pub account: DelegatingAccount,
    /// The agency's name.
    pub agency_name: String,
    /// 900 to 86400.
    pub duration_seconds: u32,
    /// `session_user.name`: the name of the agency session (5 to 32 characters, a letter first).
    pub session_user: String,
}

impl AgencyRequest {
    /// The request body, as the contract gives it (no `scope`, no `policy`).
    pub fn body(&self) -> serde_json::Value {
        let mut assume_role = json!({
            "agency_name": self.agency_name,
            "duration_seconds": self.duration_seconds,
            "session_user": { "name": self.session_user },
        });
        match &self.account {
            DelegatingAccount::Id(id) => assume_role["domain_id"] = json!(id),
            DelegatingAccount::Name(name) => assume_role["domain_name"] = json!(name),
        }
        json!({ "auth": { "identity": { "methods": ["assume_role"], "assume_role": assume_role } } })
    }
}

/// Asks IAM for the agency's temporary credentials, authenticated with `caller` (the operator's
/// own identity). A refusal keeps IAM's code for status and its message for the log only.
pub async fn assume_agency(
    http: &reqwest::Client,
    caller: &Credentials,
    request: &AgencyRequest,
) -> Result<TemporaryCredentials, AmbientError> {
    let kind = AmbientKind::Agency;
    let mut url = request.iam_endpoint.clone();
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}{SECURITY_TOKENS_PATH}"));
    let body = request.body().to_string().into_bytes();
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(failure(kind, "the IAM endpoint has no host")),
    };
    let mut headers: Vec<(String, String)> = vec![
        ("Content-Type".into(), "application/json;charset=utf8".into()),
        ("Host".into(), host),
    ];
    match caller {
        Credentials::AkSk {
            access_key_id,
            secret_access_key,
            security_token,
        } => {
            let date = jiff::Timestamp::now().strftime(signer::DATE_FORMAT).to_string();
            headers.push((signer::DATE_HEADER.into(), date.clone()));
            if let Some(token) = security_token {
                headers.push(("X-Security-Token".into(), token.expose().to_string()));
            }
            let signing = SigningRequest {
                method: "POST",
                path: url.path(),
                query: &[],
                headers: &headers,
                body: &body,
            };
            let authorization =
                signer::authorization(access_key_id, secret_access_key.expose(), &date, &signing);
            headers.push(("Authorization".into(), authorization));
        }
        Credentials::Token(token) => headers.push(("X-Auth-Token".into(), token.expose().to_string())),
    }
    let mut builder = http.post(url);
    for (name, value) in headers {
        let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            failure(
                kind,
                format!("the {name} header would hold characters HTTP does not allow"),
            )
        })?;
        if matches!(
            name.as_str(),
            "Authorization" | "X-Auth-Token" | "X-Security-Token"
        ) {
            value.set_sensitive(true);
        }
        builder = builder.header(name, value);
    }
    let (status, answer) = send(kind, builder.body(body)).await?;
    if !(200..300).contains(&status) {
        return Err(refused(kind, status, &answer));
    }
    parse_temporary_credentials(&answer).map_err(|why| AmbientError {
        http_status: Some(status),
        ..failure(kind, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_contracts() {
        let request = AgencyRequest {
            iam_endpoint: Url::parse(GLOBAL_IAM_ENDPOINT).unwrap(),
            account: DelegatingAccount::Id("d1".into()),
            agency_name: "workspace-assist".into(),
            duration_seconds: 900,
            session_user: "assist-b".into(),
        };
        assert_eq!(
            request.body(),
            json!({"auth": {"identity": {"methods": ["assume_role"], "assume_role": {
                "agency_name": "workspace-assist", "domain_id": "d1", "duration_seconds": 900,
                "session_user": {"name": "assist-b"}}}}})
        );
        let by_name = AgencyRequest {
            account: DelegatingAccount::Name("acme".into()),
            ..request
        };
        let body = by_name.body();
        let assume_role = &body["auth"]["identity"]["assume_role"];
        assert_eq!(assume_role["domain_name"], "acme");
        assert!(assume_role.get("domain_id").is_none() && assume_role.get("scope").is_none());
    }
}
