//! The simulator's stand-ins for the sources of temporary credentials (the contract's
//! "Credentials without a Secret"): CCE pod identity, STS `assume-with-oidc` and the ECS metadata
//! service. Each issues temporary AK/SK + security token that the Workspace side accepts (with
//! `X-Security-Token`) until they expire.
//!
//! The Kubernetes tokens presented are checked for real against a Kubernetes API server: pod
//! identity with a TokenReview, OIDC with the signature against the API server's JWKS
//! (`/openid/v1/jwks`) plus issuer, audience and expiry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The path the simulator serves CCE pod identity on (`HC_CONTAINER_CREDENTIALS_FULL_URI`).
pub const POD_IDENTITY_PATH: &str = "/v1/pod-identity/credentials";

/// STS `assume-with-oidc`.
pub const ASSUME_WITH_OIDC_PATH: &str = "/v5/agencies/assume-with-oidc";

/// The ECS metadata session token (PUT).
pub const METADATA_TOKEN_PATH: &str = "/meta-data/latest/api/token";

/// The ECS metadata security key (GET).
pub const METADATA_SECURITY_KEY_PATH: &str = "/openstack/latest/securitykey";

/// What the metadata service answers a node without an agency.
pub const NO_AGENCY_MESSAGE: &str = "Please configure Cloud Service Agency first";

/// An OIDC identity provider registered in IAM, and the agencies it may assume.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// The token issuer it trusts (the cluster's service-account issuer).
    pub issuer: String,
    /// The audience (client ID) tokens must carry.
    pub audience: String,
    /// The agencies (URNs) its tokens may assume.
    pub agencies: HashSet<String>,
    /// The token subjects (`system:serviceaccount:NS:NAME`) allowed.
    pub subjects: HashSet<String>,
}

/// How the ECS metadata service behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataService {
    /// The node has an agency (else 401 "Please configure Cloud Service Agency first").
    pub agency: bool,
    /// The service supports session tokens (else the token PUT answers 404).
    pub session_tokens: bool,
}

/// The identity side of the simulator's state.
#[derive(Default)]
pub struct Identities {
    /// The API server that checks Kubernetes tokens.
    pub kubernetes: Option<kube::Client>,
    /// Pod identity: the audience its tokens carry, and the ServiceAccounts bound to an agency.
    pub pod_identity: Option<(String, HashSet<String>)>,
    /// OIDC providers by URN.
    pub oidc_providers: HashMap<String, OidcProvider>,
    /// The ECS metadata service, when the simulator plays one.
    pub metadata: Option<MetadataService>,
    /// Session tokens the metadata service issued and still accepts.
    pub metadata_tokens: HashSet<String>,
    /// Lifetime of issued temporary credentials.
    pub lifetime: Option<Duration>,
    /// Temporary credentials issued, by source.
    pub issued: HashMap<&'static str, usize>,
    /// The secret parts (secret key, security token) of every temporary credential issued.
    pub issued_secrets: Vec<String>,
    /// Requests refused, by source.
    pub refused: HashMap<&'static str, usize>,
}

/// Why a presented Kubernetes token is refused.
pub type Refusal = (u16, &'static str, String);

/// The ServiceAccount (`system:serviceaccount:NS:NAME`) a token belongs to, by TokenReview.
pub async fn review(client: &kube::Client, token: &str, audience: &str) -> Result<String, Refusal> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![audience.to_string()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| (503, "SIM.0503", format!("TokenReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err((
            401,
            "SIM.0401",
            format!("the token is not valid: {}", status.error.unwrap_or_default()),
        ));
    }
    if !status.audiences.unwrap_or_default().iter().any(|a| a == audience) {
        return Err((
            401,
            "SIM.0401",
            format!("the token is not for audience {audience}"),
        ));
    }
    status
        .user
        .and_then(|u| u.username)
        .ok_or_else(|| (401, "SIM.0401", "the token names no user".into()))
}

/// The subject of an ID token, after checking its signature against the API server's JWKS and
/// its issuer, audience and expiry.
pub async fn verify_id_token(
    client: &kube::Client,
    token: &str,
    provider: &OidcProvider,
) -> Result<String, Refusal> {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
    let invalid = |why: String| (400, "SIM.0400", format!("the ID token is not valid: {why}"));
    let header = decode_header(token).map_err(|e| invalid(e.to_string()))?;
    let request = http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .expect("a request");
    let jwks: JwkSet = client
        .request(request)
        .await
        .map_err(|e| (503, "SIM.0503", format!("reading the JWKS: {e}")))?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| invalid("no key in the JWKS signed it".into()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&provider.issuer]);
    validation.set_audience(&[&provider.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    let claims = decode::<Value>(token, &key, &validation)
        .map_err(|e| invalid(e.to_string()))?
        .claims;
    claims["sub"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid("no subject".into()))
}

/// A new set of temporary credentials: (access key, secret key, security token).
pub fn new_temporary() -> (String, String, String) {
    let ak: String = (0..20)
        .map(|_| (b'A' + rand::random_range(0..26u8)) as char)
        .collect();
    (
        ak,
        super::random_hex(20),
        format!("gQpjbi{}", super::random_hex(64)),
    )
}

/// The temporary-credential JSON in the shape each source answers with.
pub fn credential_body(
    source: &'static str,
    (ak, sk, token): &(String, String, String),
    expires_at: jiff::Timestamp,
) -> Value {
    let expires = expires_at.strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
    match source {
        // STS v5: snake_case under "credentials".
        "oidc" => {
            json!({ "credentials": { "access_key_id": ak, "secret_access_key": sk, "security_token": token, "expiration": expires } })
        }
        // The metadata service: IAM's security-token shape under "credential".
        "ecs-metadata" => {
            json!({ "credential": { "access": ak, "secret": sk, "securitytoken": token, "expires_at": expires } })
        }
        // Pod identity: at top level.
        _ => json!({ "access": ak, "secret": sk, "securitytoken": token, "expires_at": expires }),
    }
}
