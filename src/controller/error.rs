//! Errors of a reconcile, each with its category (what the operator does next) and a stable
//! reason shared by conditions, Events and metrics.

use crate::workspace::{CloudError, Disposition};

use super::credentials::CredentialsError;

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cloud call failed.
    #[error("{error}")]
    Cloud {
        /// The failure.
        error: CloudError,
        /// What it means for the next step.
        disposition: Disposition,
    },
    /// The cloud says the desktop does not exist: a 404 Workspace error from Show or Create. A
    /// person must fix spec.desktopId (or spec.projectId); deleting the resource needs no cancel.
    #[error("the desktop does not exist in the cloud: {0}")]
    DesktopNotFound(CloudError),
    /// The credentials could not be read.
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    /// The resource's spec cannot be acted on (for example an endpoint that is not a URL).
    #[error("{0}")]
    InvalidSpec(String),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
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
            disposition => Error::Cloud { error, disposition },
        }
    }

    /// Whether a person must act before a retry can succeed (the operator then rechecks slowly
    /// and at once when the Secret, the spec or the retry annotation changes).
    pub fn needs_human(&self) -> bool {
        match self {
            Error::Cloud { disposition, .. } => matches!(disposition, Disposition::NeedsHuman(_) | Disposition::RenewToken),
            Error::DesktopNotFound(_) | Error::Credentials(_) | Error::InvalidSpec(_) | Error::Paused => true,
            Error::Kube(_) | Error::Finalizer(_) => false,
        }
    }

    /// A stable CamelCase reason for conditions, Events and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Cloud { disposition, .. } => disposition.reason(),
            Error::DesktopNotFound(_) => "DesktopNotFound",
            Error::Credentials(e) => e.reason(),
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Kube(_) => "KubernetesApiError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Paused => "Paused",
        }
    }
}
