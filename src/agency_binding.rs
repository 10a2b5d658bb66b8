//! The `AgencyBinding` custom resource (`workspace.assist.dev/v1alpha1`, cluster-scoped): the
//! cluster admin's decision that RemoteAssistances in some namespaces reach another Huawei Cloud
//! account through an IAM agency that account created for the operator's own identity.
//!
//! Doc comments on the types and fields below become the CRD's descriptions, and so what
//! `kubectl explain agencybinding.spec` shows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The finalizer that holds an AgencyBinding while a RemoteAssistance that may still need to
/// cancel a session uses it.
pub const BINDING_FINALIZER: &str = "workspace.assist.dev/agency-binding-in-use";

/// The label the operator puts on a RemoteAssistance that reaches the cloud through a binding:
/// its value is the binding's name. It is how the binding's users are found across shards.
pub const BINDING_LABEL: &str = "workspace.assist.dev/agency-binding";

/// How long agency credentials live when the binding does not say (one hour).
pub const DEFAULT_DURATION_SECONDS: u32 = 3600;

/// The cluster admin's grant: RemoteAssistances in the selected namespaces (without a
/// credentials Secret of their own) reach the delegating account through its agency, with
/// temporary credentials the operator's own identity obtains from IAM
/// (POST /v3.0/OS-CREDENTIAL/securitytokens, assume_role).
// kube's derive takes one `printcolumn(...)` per column: repeated on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workspace.assist.dev",
    version = "v1alpha1",
    kind = "AgencyBinding",
    plural = "agencybindings",
    singular = "agencybinding",
    category = "workspace",
    status = "AgencyBindingStatus",
    derive = "PartialEq",
    doc = "The cluster admin's grant that RemoteAssistances in the selected namespaces use an IAM agency of another Huawei Cloud account.",
    printcolumn(
        name = "Agency",
        type_ = "string",
        json_path = ".spec.agencyName",
        description = "The agency"
    ),
    printcolumn(
        name = "In-Use",
        type_ = "integer",
        json_path = ".status.inUse",
        description = "RemoteAssistances that use it"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the last fetch of credentials worked"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.domainId) != has(self.domainName)").message("set exactly one of domainId or domainName (the delegating account)"))]
#[serde(rename_all = "camelCase")]
pub struct AgencyBindingSpec {
    /// The ID of the delegating account (the account that created the agency). Set this or
    /// domainName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub domain_id: Option<String>,

    /// The name of the delegating account. Set this or domainId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub domain_name: Option<String>,

    /// The name of the agency in the delegating account; it must trust the account of the
    /// operator's own identity.
    #[schemars(length(min = 1, max = 64))]
    pub agency_name: String,

    /// How long each set of temporary credentials lives, in seconds: 900 (15 minutes) to
    /// 86400 (24 hours), default 3600. The operator fetches new ones before they expire.
    #[serde(default = "default_duration")]
    #[schemars(range(min = 900, max = 86400))]
    pub duration_seconds: u32,

    /// The namespaces whose RemoteAssistances may use this binding. Select by the label
    /// kubernetes.io/metadata.name, which the API server sets and no namespace user can change
    /// (for example matchLabels: {kubernetes.io/metadata.name: helpdesk-a}); a label that
    /// namespace admins may set lets them opt in on their own. An empty selector selects every
    /// namespace.
    pub namespace_selector: LabelSelector,

    /// The projects (of the delegating account) RemoteAssistances may name through this
    /// binding; empty: any. A resource naming another project is Stalled
    /// (AgencyProjectNotAllowed) and makes no call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 255)))]
    pub project_ids: Vec<String>,
}

fn default_duration() -> u32 {
    DEFAULT_DURATION_SECONDS
}

/// Observed state of an AgencyBinding, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgencyBindingStatus {
    /// Ready: the last fetch of temporary credentials worked (reason FetchSucceeded) or failed
    /// (reason: the HTTP status and IAM's error code, never a credential). Unknown until the
    /// first resource needs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// How many RemoteAssistances use the binding and may still need it to cancel. While any
    /// does, deleting the binding waits (finalizer workspace.assist.dev/agency-binding-in-use).
    #[serde(default)]
    #[schemars(with = "i32", range(min = 0))]
    pub in_use: u32,

    /// The session_user.name the operator sends with assume_role: the name of the agency
    /// session behind every call made through this binding (Cloud Trace Service shows an agency
    /// session's name in principal_id, <agency-id>:<session name>; see docs/agencies.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_user: Option<String>,

    /// When temporary credentials were last fetched, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<Time>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The first characters of a session user name (IAM wants a letter first).
const SESSION_USER_PREFIX: &str = "assist-";

/// The longest session_user.name IAM takes.
const SESSION_USER_MAX: usize = 32;

/// The session_user.name of the agency session of the binding `binding`: `assist-` and the
/// binding's name, with characters IAM does not take (`.`) as `-`; names too long are cut and
/// end in 8 hex digits of a hash of the whole name, so that it stays unique and stable.
/// Always 8 to 32 letters, digits, `-` or `_`, starting with a letter.
pub fn session_user_name(binding: &str) -> String {
    let cleaned: String = binding
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let whole = format!("{SESSION_USER_PREFIX}{cleaned}");
    if whole.len() <= SESSION_USER_MAX {
        return whole;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(binding.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", &whole[..SESSION_USER_MAX - 9])
}

/// The AgencyBinding CRD, with the rule on the whole object that the derive cannot place:
/// its name is at most 63 characters, so that it fits in a label value ([`BINDING_LABEL`]).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube::CustomResourceExt;
    let mut crd = AgencyBinding::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: "self.metadata.name.size() <= 63".to_string(),
                    message: Some("an AgencyBinding's name is at most 63 characters".to_string()),
                    ..ValidationRule::default()
                });
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_user_names_are_what_iam_takes() {
        let ok = |name: &str| {
            (5..=32).contains(&name.len())
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        for binding in ["a", "account-b", "tenant.example.com", &"x".repeat(63)] {
            let name = session_user_name(binding);
            assert!(ok(&name), "{binding:?} gave {name:?}");
            assert_eq!(name, session_user_name(binding), "stable");
        }
        assert_eq!(session_user_name("account-b"), "assist-account-b");
        assert_ne!(
            session_user_name(&"x".repeat(60)),
            session_user_name(&"x".repeat(61)),
            "long names stay apart"
        );
    }
}
