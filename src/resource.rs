//! The `RemoteAssistance` custom resource (`workspace.assist.dev/v1alpha1`).
//!
//! Doc comments on the types and fields below become the CRD's descriptions, and so what
//! `kubectl explain remoteassistance.spec` shows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the project's resources.
pub const GROUP: &str = "workspace.assist.dev";
/// The finalizer that holds a RemoteAssistance until its cloud session is cancelled.
pub const FINALIZER: &str = "workspace.assist.dev/cancel";
/// The finalizer that holds a credentials Secret while a RemoteAssistance may still need it to
/// cancel (so deleting a namespace cannot delete the Secret first).
pub const SECRET_FINALIZER: &str = "workspace.assist.dev/credentials-in-use";
/// Annotation (on the resource or its namespace) that sets the deletion policy: Cancel or Orphan.
pub const DELETION_POLICY_ANNOTATION: &str = "workspace.assist.dev/deletion-policy";
/// The prefix of every annotation the operator reads.
pub const ANNOTATION_PREFIX: &str = "workspace.assist.dev/";
/// Annotation that, when "true", stops every cloud call for the resource.
pub const PAUSED_ANNOTATION: &str = "workspace.assist.dev/paused";
/// Annotation whose every new value re-drives a stalled resource at once.
pub const RETRY_ANNOTATION: &str = "workspace.assist.dev/retry";

/// A remote-assistance session of Huawei Cloud Workspace for one desktop. While the resource
/// exists the operator holds a finalizer on it; deleting the resource (with deletionPolicy
/// Cancel) or setting spec.cancelled cancels the assistance in the cloud.
// kube's derive takes one `printcolumn(...)` per column: repeated on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workspace.assist.dev",
    version = "v1alpha1",
    kind = "RemoteAssistance",
    plural = "remoteassistances",
    singular = "remoteassistance",
    shortname = "ra",
    category = "workspace",
    namespaced,
    status = "RemoteAssistanceStatus",
    derive = "PartialEq",
    doc = "A remote-assistance session of Huawei Cloud Workspace for one desktop, cancelled through a finalizer.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Desktop",
        type_ = "string",
        json_path = ".spec.desktopId",
        description = "Desktop ID"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the desired state holds"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.lastError.errorCode",
        description = "Error code of the last failed cloud call"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.region) || has(self.endpoint)").message("one of region or endpoint is required"))]
#[serde(rename_all = "camelCase")]
pub struct RemoteAssistanceSpec {
    /// Huawei Cloud project ID that owns the desktop (1 to 255 characters, not "." or "..").
    /// Immutable.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("projectId is immutable"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("projectId cannot be . or .."))]
    pub project_id: String,

    /// ID of the Workspace desktop to assist (1 to 255 characters, not "." or ".."). Immutable.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("desktopId is immutable"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("desktopId cannot be . or .."))]
    pub desktop_id: String,

    /// Huawei Cloud region ID, for example cn-north-4. Selects the endpoint
    /// https://workspace.{region}.myhuaweicloud.com unless endpoint is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// Endpoint URL that overrides the region's public endpoint: a private endpoint, a proxy or a
    /// simulator, for example https://workspace.example.internal. The operator sends credentials
    /// only to endpoints its admin allowed (--allowed-endpoint); any other is refused
    /// (EndpointNotAllowed) and nothing is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("endpoint must be an absolute http:// or https:// URL"))]
    pub endpoint: Option<String>,

    /// Secret in this namespace with the cloud credentials: accessKeyId and secretAccessKey
    /// (plus securityToken for temporary credentials), or token (an IAM token). Optional when
    /// the operator was started with default credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// The AgencyBinding (cluster-scoped, created by the cluster admin) to reach the cloud
    /// through, when several select this namespace; it must select this namespace, else the
    /// resource is Stalled (AgencyBindingNotAllowed) and makes no call. Unset: the one binding
    /// that selects the namespace, if exactly one does. A credentials Secret
    /// (credentialsSecretRef) comes first; the operator's default credentials come after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub agency_binding: Option<String>,

    /// Set to true to cancel the assistance and keep this object. It cannot be set back to
    /// false: a new session is a new RemoteAssistance.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("cancelled cannot be set back to false; create a new RemoteAssistance for a new session"))]
    pub cancelled: bool,

    /// What deleting this object does to the cloud session: Cancel (cancel it) or Orphan (leave
    /// it alone; needs no credentials). When unset: the annotation
    /// workspace.assist.dev/deletion-policy on this object, then on its namespace, then the
    /// operator's default (Cancel unless configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// Whether the operator starts a remote assistance (CreateRemoteAssistance) when none is in
    /// progress for the desktop. One already in progress is adopted either way. With false the
    /// operator only observes a session started elsewhere (for example by the desktop user) and
    /// cancels it on delete or cancel.
    #[serde(default = "default_true")]
    pub initiate: bool,

    /// The longest the session may stay open, as a duration such as 30m, 2h or 1h30m (units h,
    /// m, s), counted from the session's creation time as the cloud reports it (or from when
    /// the operator created or adopted it, if the cloud gives none). When it has passed, the
    /// operator cancels the session as if cancelled were set: phase Cancelled, reason
    /// DeadlineExceeded, and no new session for this object. Changing it moves the deadline
    /// (below the time already elapsed: cancelled at once). Unset: the operator's
    /// --default-max-duration; the operator's --max-duration caps it, and status says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    #[x_kube(validation = Rule::new(MAX_SPEC_DURATION_RULE).message("maxDuration must be at most 876000h (100 years)"))]
    pub max_duration: Option<String>,

    /// How long after it finished (phase Cancelled or Closed) the operator deletes this object,
    /// as a duration such as 1h or 24h (0s: at once), like a Job's ttlSecondsAfterFinished.
    /// The finalizer then comes off without another cancel. Changing it later counts from
    /// the same finish time. Unset: the operator's --default-ttl-after-finished (none by
    /// default: finished objects stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    #[x_kube(validation = Rule::new(MAX_SPEC_DURATION_RULE).message("ttlAfterFinished must be at most 876000h (100 years)"))]
    pub ttl_after_finished: Option<String>,
}

/// Parses the durations of the spec (`maxDuration`, `ttlAfterFinished`): one or more
/// `<integer><unit>` with units h, m and s, such as 30m, 2h or 1h30m.
pub fn parse_spec_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30m, 2h or 1h30m");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .filter(|t| *t <= MAX_SPEC_DURATION_SECS)
            .ok_or_else(|| format!("{text:?} is longer than 100 years"))?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// The longest duration the spec may ask for (100 years): far beyond any use, and safe to add
/// to any timestamp. The CRD refuses longer ones ([`MAX_SPEC_DURATION_RULE`]), so the API
/// server and the parser accept the same durations.
const MAX_SPEC_DURATION_SECS: u64 = 100 * 365 * 24 * 3600;

/// The CRD's bound on the spec's durations: CEL parses them as Go durations (a value beyond
/// Go's range is an evaluation error, which refuses the request too). 876000h is
/// [`MAX_SPEC_DURATION_SECS`].
const MAX_SPEC_DURATION_RULE: &str = "duration(self) <= duration('876000h')";

/// The CRD's rule that a held session's place does not change: the fields that say where the
/// session lives and with which credentials are fixed while status.session is set.
pub const SESSION_BINDING_RULE: &str = "!has(oldSelf.status) || !has(oldSelf.status.session) || (\
(has(self.spec.endpoint) == has(oldSelf.spec.endpoint) && (!has(self.spec.endpoint) || self.spec.endpoint == oldSelf.spec.endpoint)) && \
(has(self.spec.region) == has(oldSelf.spec.region) && (!has(self.spec.region) || self.spec.region == oldSelf.spec.region)) && \
(has(self.spec.credentialsSecretRef) == has(oldSelf.spec.credentialsSecretRef) && \
(!has(self.spec.credentialsSecretRef) || self.spec.credentialsSecretRef.name == oldSelf.spec.credentialsSecretRef.name)) && \
(has(self.spec.agencyBinding) == has(oldSelf.spec.agencyBinding) && (!has(self.spec.agencyBinding) || self.spec.agencyBinding == oldSelf.spec.agencyBinding)))";

/// The message of [`SESSION_BINDING_RULE`].
pub const SESSION_BINDING_MESSAGE: &str = "spec.endpoint, spec.region, spec.credentialsSecretRef and spec.agencyBinding cannot change while the resource holds a session (status.session); cancel it first (spec.cancelled) or create a new RemoteAssistance";

/// The RemoteAssistance CRD, with the rules on the whole object that the derive cannot place
/// (the session binding, which compares the spec with the old status).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube::CustomResourceExt;
    let mut crd = RemoteAssistance::crd();
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
                    rule: SESSION_BINDING_RULE.to_string(),
                    message: Some(SESSION_BINDING_MESSAGE.to_string()),
                    reason: Some("FieldValueForbidden".to_string()),
                    ..ValidationRule::default()
                });
            // A resource the operator has not reconciled yet reads with
            // status.observedGeneration 0 (the API server defaults it when it reads the object):
            // kstatus (Flux) and Argo CD's health check then see it in progress, not Current, so
            // a GitOps sync waits for the operator's first status instead of passing before it.
            if let Some(status) = schema.properties.as_mut().and_then(|p| p.get_mut("status")) {
                status.default = Some(
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                        serde_json::json!({ "observedGeneration": 0 }),
                    ),
                );
            }
        }
    }
    crd
}

fn default_true() -> bool {
    true
}

/// Reference to a Secret in the resource's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// Name of the Secret, in the resource's own namespace (a Secret of another namespace cannot
    /// be named).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// What deleting a RemoteAssistance does to its cloud session.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Cancel the remote assistance in the cloud before the object goes away.
    #[default]
    Cancel,
    /// Leave the cloud session alone; the object goes away at once.
    Orphan,
}

/// The one parser of a deletion policy's text (flags, and the annotation on a resource or its
/// namespace): `Cancel` or `Orphan`, surrounding blanks ignored, case sensitive.
impl std::str::FromStr for DeletionPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<DeletionPolicy, String> {
        match s.trim() {
            "Cancel" => Ok(DeletionPolicy::Cancel),
            "Orphan" => Ok(DeletionPolicy::Orphan),
            _ => Err(format!("{s:?} must be Cancel or Orphan")),
        }
    }
}

impl RemoteAssistance {
    /// The deletion policy the resource itself sets: its spec, else its annotation (an
    /// unreadable annotation sets none). The namespace's and the operator's defaults come after.
    pub fn own_deletion_policy(&self) -> Option<DeletionPolicy> {
        self.spec.deletion_policy.or_else(|| {
            self.metadata
                .annotations
                .as_ref()?
                .get(DELETION_POLICY_ANNOTATION)?
                .parse()
                .ok()
        })
    }
}

/// Lifecycle phase of a RemoteAssistance.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The operator has not yet confirmed the session with the cloud.
    Pending,
    /// The session is held: the finalizer is in place and the cloud answered.
    Active,
    /// A cancel was requested (spec.cancelled or deletion) and has not been confirmed yet.
    Cancelling,
    /// The cloud confirmed the cancel, or confirmed there was nothing to cancel.
    Cancelled,
    /// The last attempt failed with an error that needs a person (credentials, permissions,
    /// a bad request); the operator rechecks slowly and when the Secret or the spec changes.
    Failed,
    /// The cloud reports the session closed by someone else (the desktop user, another tool);
    /// nothing is left to cancel.
    Closed,
}

impl Phase {
    /// Every phase, in lifecycle order (the metrics report each, zero included).
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Active,
        Phase::Cancelling,
        Phase::Cancelled,
        Phase::Closed,
        Phase::Failed,
    ];

    /// The phase as status.phase spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Active => "Active",
            Phase::Cancelling => "Cancelling",
            Phase::Cancelled => "Cancelled",
            Phase::Failed => "Failed",
            Phase::Closed => "Closed",
        }
    }
}

/// Observed state of a RemoteAssistance, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteAssistanceStatus {
    /// Lifecycle phase: Pending, Active, Cancelling, Cancelled, Closed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the desired state holds), Synced (the last reconcile reached the cloud and
    /// succeeded), and kstatus's Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The last failed cloud call, cleared by the next success.
    // Boxed: most objects have none, and the operator's cache holds every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Box<LastError>>,

    /// When the cloud confirmed the cancel (or that there was nothing to cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Time>,

    /// How many CancelRemoteAssistance calls the operator has made for this resource.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(with = "i32", range(min = 0))]
    pub cancel_attempts: u32,

    /// What the cloud reports about the session (never its secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistance: Option<AssistanceStatus>,

    /// Secret (owned by this resource) with the invitation code, share space password and share
    /// links, while the session is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_secret_name: Option<String>,

    /// Where the operator's credentials for this resource came from: `Secret` (the one named
    /// in spec.credentialsSecretRef), `DefaultSecret` (the operator's default Secret), or the
    /// operator's own identity: `pod-identity`, `oidc` or `ecs-metadata`, or an agency:
    /// `AgencyBinding/<name>`. Never a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_source: Option<String>,

    /// The session_user.name of the agency session this resource's calls were made with, when
    /// they go through an AgencyBinding: with the desktop ID (one resource per desktop) it
    /// finds this resource's calls in Cloud Trace Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency_session_user: Option<String>,

    /// When the session the resource holds reaches its maximum duration (spec.maxDuration, or
    /// the operator's default and maximum) and is cancelled; set while a session is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Set when the operator's --max-duration capped spec.maxDuration (or the default): what
    /// was asked for and what applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_capped: Option<String>,

    /// When the operator cancelled the session because its maximum duration had passed. Such
    /// an object is finished: no new session is started for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_exceeded_at: Option<Time>,

    /// When the object finished (phase Cancelled or Closed): ttlAfterFinished counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// Where the session this resource holds lives, recorded when it was opened or adopted:
    /// every later call for it (observe, cancel, the deadline) goes there, with these
    /// credentials, whatever the spec says now. While it is set, spec.endpoint, spec.region,
    /// spec.credentialsSecretRef and spec.agencyBinding cannot change. Cleared once the
    /// session is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionBinding>,
}

impl RemoteAssistanceStatus {
    /// Whether this status records a session the resource took hold of: status.session, or,
    /// in a status written before that field existed, the session's facts.
    pub fn records_a_session(&self) -> bool {
        self.session.is_some()
            || self
                .assistance
                .as_ref()
                .is_some_and(|a| a.share_space_id.is_some() || a.held_since.is_some())
    }
}

/// Where a held session lives and which credentials reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionBinding {
    /// The Workspace endpoint the session was opened or adopted at.
    #[schemars(length(max = 2048))]
    pub endpoint: String,
    /// The project.
    #[schemars(length(max = 255))]
    pub project_id: String,
    /// The desktop.
    #[schemars(length(max = 255))]
    pub desktop_id: String,
    /// The session's share space, once the cloud reported it; kept when later answers leave it
    /// out. A session with another share space is never cancelled for this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub share_space_id: Option<String>,
    /// The credentials Secret (in this namespace) the session was reached with; unset: the
    /// operator's default credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret_name: Option<String>,
    /// The AgencyBinding the session was reached through; the cancel goes through it even
    /// after the binding stopped selecting this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub agency_binding: Option<String>,
    /// When the operator first saw the session in progress; never moves while it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Time>,
}

/// The non-secret facts of a remote-assistance session, as the cloud reports them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssistanceStatus {
    /// The collaboration space of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub share_space_id: Option<String>,
    /// Name of the share space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub share_space_name: Option<String>,
    /// Cloud status: WAIT_USER_CONFIRM, WAIT_USER_ACCESS, OPEN or CLOSE (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub status: Option<String>,
    /// ADMIN_INITIATE or ENDUSER_INITIATE (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub initiator_type: Option<String>,
    /// When the session was created (UTC, as the cloud reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub create_time: Option<String>,
    /// Why the session failed, when the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub failed_reason: Option<String>,
    /// Whether this operator created the session (false: adopted one already in progress).
    #[serde(default)]
    pub created_by_operator: bool,
    /// When this operator first saw the session in progress (created or adopted it): the start
    /// of its maximum duration when the cloud reports no creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A failed cloud call, as the cloud described it. Text from the cloud is cut (visibly, ending
/// in `…[truncated]`) to the maxLength of its field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// The cloud operation: CancelRemoteAssistance, CreateRemoteAssistance or
    /// ShowDesktopRemoteAssistanceInfo.
    #[schemars(length(max = 64))]
    pub operation: String,
    /// HTTP status of the answer; absent when no answer arrived (timeout, connection error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 100, max = 599))]
    pub http_status: Option<u16>,
    /// The cloud's error code, verbatim (for example WKS.00010032 or APIGW.0301).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub error_code: Option<String>,
    /// The cloud's error message, or a description of the transport failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error_message: Option<String>,
    /// The cloud's error_detail, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error_detail: Option<String>,
    /// Encrypted denial reason; decode it with IAM's STS decode-authorization-message API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub encoded_authorization_message: Option<String>,
    /// X-Request-Id of the failed call: quote it to Huawei Cloud support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub request_id: Option<String>,
    /// When the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// A RemoteAssistance for unit tests: desktop `d` of project `p` in cn-north-4.
#[cfg(test)]
pub(crate) fn sample(name: &str) -> RemoteAssistance {
    let spec = RemoteAssistanceSpec {
        project_id: "p".into(),
        desktop_id: "d".into(),
        region: Some("cn-north-4".into()),
        endpoint: None,
        credentials_secret_ref: None,
        agency_binding: None,
        cancelled: false,
        deletion_policy: None,
        initiate: true,
        max_duration: None,
        ttl_after_finished: None,
    };
    RemoteAssistance::new(name, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_the_status_spelling() {
        for phase in Phase::ALL {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    #[test]
    fn a_deletion_policy_reads_as_written_with_blanks_around() {
        assert_eq!(" Orphan ".parse(), Ok(DeletionPolicy::Orphan));
        assert_eq!("Cancel".parse(), Ok(DeletionPolicy::Cancel));
        assert!("orphan".parse::<DeletionPolicy>().is_err());
        let mut ra = sample("x");
        ra.metadata.annotations =
            Some([(DELETION_POLICY_ANNOTATION.to_string(), "Orphan".to_string())].into());
        assert_eq!(ra.own_deletion_policy(), Some(DeletionPolicy::Orphan));
        ra.spec.deletion_policy = Some(DeletionPolicy::Cancel);
        assert_eq!(
            ra.own_deletion_policy(),
            Some(DeletionPolicy::Cancel),
            "the spec first"
        );
    }
}
