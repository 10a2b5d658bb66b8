//! Errors of a reconcile, each with its category (what the operator does next) and a stable
//! reason shared by conditions, Events and metrics.

use crate::workspace::{AmbientError, CloudError, Disposition};

use super::credentials::agencies::AgencyBindingError;
use super::credentials::secret::CredentialsError;

/// The result of a controller operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a reconcile did not finish. A Kubernetes API failure always carries what it was for
/// ([`Error::kubernetes`]: verb, kind, object): there is no conversion from `kube::Error`, so a
/// `?` cannot skip that context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cloud call failed.
    #[error("{error}")]
    Cloud {
        /// The failure.
        #[source]
        error: CloudError,
        /// What it means for the next step.
        disposition: Disposition,
    },
    /// The cloud says the desktop does not exist: a 404 Workspace error from Show or Create. A
    /// person must fix spec.desktopId (or spec.projectId); deleting the resource needs no cancel.
    #[error("the desktop does not exist in the cloud: {0}")]
    DesktopNotFound(#[source] CloudError),
    /// The credentials could not be read.
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    /// The endpoint (of the spec, or a Secret's iamEndpoint) is not one the operator allows:
    /// nothing is sent to it.
    #[error(
        "{0} is not an endpoint this operator may send credentials to: a cluster admin allows it with --allowed-endpoint"
    )]
    EndpointNotAllowed(String),
    /// The resource names no Secret, and its namespace may not use the operator's default
    /// credentials (`--default-credentials-namespaces`): nothing is sent.
    #[error(
        "spec.credentialsSecretRef is not set, and namespace {0} may not use the operator's default credentials: a cluster admin allows namespaces with --default-credentials-namespaces"
    )]
    DefaultCredentialsNotAllowed(String),
    /// The AgencyBinding this resource would use cannot be used for it: nothing is sent (and
    /// IAM is not asked).
    #[error("{0}")]
    AgencyBinding(#[from] AgencyBindingError),
    /// The operator's own identity gave no credentials (the source is named, never a token):
    /// retried with backoff, and the source itself is asked again only after its own backoff.
    #[error("{0}")]
    CredentialsSource(#[source] AmbientError),
    /// A field that says where the held session lives (the endpoint, region or credentials
    /// Secret) changed while the session is held: nothing is sent to the new place; the session
    /// is still observed and cancelled where it was opened (status.session).
    #[error(
        "{0} changed while this resource holds a session; the session stays where it was opened (status.session) and nothing is sent to the new place: change it back, or cancel (spec.cancelled) and create a new RemoteAssistance"
    )]
    SessionBindingChanged(String),
    /// The invitation Secret's name is taken by a Secret this resource does not control: it is
    /// not overwritten.
    #[error(
        "the Secret {0} exists and is not controlled by this RemoteAssistance: the session's invitation is not written over it; delete or rename that Secret"
    )]
    InvitationSecretTaken(String),
    /// The resource's spec cannot be acted on (for example an endpoint that is not a URL).
    #[error("{0}")]
    InvalidSpec(String),
    /// A Kubernetes API call the operator needed failed: which verb on which object (never a
    /// value), shown in status and an Event, and counted.
    #[error("{} {} {}: {}", .0.verb, .0.kind, .0.object, .0.source)]
    Kubernetes(#[source] Box<KubernetesFailure>),
    /// The object changed since this reconcile read it (a write's resourceVersion precondition
    /// failed): retried soon with the newer version, quietly.
    #[error("the object changed since it was read")]
    Stale,
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The paused annotation holds a deletion: the finalizer stays until it is removed.
    #[error("paused by the annotation workspace.assist.dev/paused")]
    Paused,
}

impl Error {
    /// The failed cloud call behind this error, if it is one.
    pub fn cloud_error(&self) -> Option<&CloudError> {
        match self {
            Error::Cloud { error, .. } | Error::DesktopNotFound(error) => Some(error),
            _ => None,
        }
    }

    /// The error for a failed Show or Create: "not found" there means the desktop is missing
    /// (only a Show body without an error shape means "no session").
    pub fn from_lookup(error: CloudError, disposition: Disposition) -> Error {
        match disposition {
            Disposition::NotFound => Error::DesktopNotFound(error),
            disposition => Error::cloud(error, disposition),
        }
    }

    /// The error for a failed cloud call; a call not sent for lack of credentials from the
    /// operator's own identity is that source's failure.
    pub fn cloud(error: CloudError, disposition: Disposition) -> Error {
        match error {
            CloudError::Source { error, .. } => Error::CredentialsSource(error),
            error => Error::Cloud { error, disposition },
        }
    }

    /// Whether a person must act before a retry can succeed (the operator then rechecks slowly
    /// and at once when the Secret, the spec or the retry annotation changes).
    pub fn needs_human(&self) -> bool {
        match self {
            Error::Cloud { disposition, .. } => {
                matches!(disposition, Disposition::NeedsHuman(_) | Disposition::RenewToken)
            }
            Error::DesktopNotFound(_)
            | Error::EndpointNotAllowed(_)
            | Error::DefaultCredentialsNotAllowed(_)
            | Error::Credentials(_)
            | Error::InvalidSpec(_)
            | Error::SessionBindingChanged(_)
            | Error::InvitationSecretTaken(_)
            | Error::AgencyBinding(_)
            | Error::Paused => true,
            Error::Kubernetes(failure) => failure.forbidden(),
            Error::Finalizer(_) | Error::Stale | Error::CredentialsSource(_) => false,
        }
    }

    /// Whether the status shows the resource Stalled: a person must act, or the operator's own
    /// identity gives no credentials (retried with backoff, but usually a setup to fix).
    pub fn stalls(&self) -> bool {
        self.needs_human() || matches!(self, Error::CredentialsSource(_))
    }

    /// A stable CamelCase reason for conditions, Events and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Cloud { disposition, .. } => disposition.reason(),
            Error::DesktopNotFound(_) => "DesktopNotFound",
            Error::Credentials(e) => e.reason(),
            Error::CredentialsSource(e) => e.kind.failure_reason(),
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::SessionBindingChanged(_) => "SessionBindingChanged",
            Error::InvitationSecretTaken(_) => "InvitationSecretTaken",
            Error::EndpointNotAllowed(_) => "EndpointNotAllowed",
            Error::DefaultCredentialsNotAllowed(_) => "DefaultCredentialsNotAllowed",
            Error::AgencyBinding(e) => e.reason(),
            Error::Kubernetes(failure) if failure.forbidden() => "KubernetesForbidden",
            Error::Kubernetes(_) => "KubernetesApiError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Stale => "CacheCatchingUp",
            Error::Paused => "Paused",
        }
    }
}

/// Why the controller could not start (the operator's settings, before any reconcile).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The API server refuses `--watch-label-selector`: the watch would fail forever.
    #[error("--watch-label-selector {selector:?}: {message}")]
    LabelSelector {
        /// The selector as configured.
        selector: String,
        /// The API server's reason.
        message: String,
    },
    /// The cloud client could not be built from the operator's settings.
    #[error("the cloud client: {0}")]
    CloudClient(#[from] crate::workspace::ClientBuildError),
}

/// A failed Kubernetes API call, with what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {object}")]
pub struct KubernetesFailure {
    /// The verb: get, patch, create, delete.
    pub verb: &'static str,
    /// The kind of object: Secret, Namespace, RemoteAssistance.
    pub kind: &'static str,
    /// `namespace/name` of the object, and what the call was for.
    pub object: String,
    /// The API's error.
    #[source]
    pub source: kube::Error,
}

impl KubernetesFailure {
    /// The HTTP status of the API's answer (0 when none arrived).
    pub fn status(&self) -> u16 {
        match &self.source {
            kube::Error::Api(s) => s.code,
            _ => 0,
        }
    }

    /// Whether the API refused it (RBAC): a person must grant the permission.
    pub fn forbidden(&self) -> bool {
        self.status() == 403
    }
}

impl Error {
    /// Wraps a failed Kubernetes API call with what it was for.
    pub fn kubernetes(
        verb: &'static str,
        kind: &'static str,
        object: impl Into<String>,
        source: kube::Error,
    ) -> Error {
        Error::Kubernetes(Box::new(KubernetesFailure {
            verb,
            kind,
            object: object.into(),
            source,
        }))
    }
}
