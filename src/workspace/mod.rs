//! Huawei Cloud Workspace remote-assistance API: the client, AK/SK signing, typed errors and the
//! classification of every answer. Nothing here knows about Kubernetes.

pub mod ambient;
pub mod classify;
pub mod client;
pub mod error;
pub mod iam;
pub mod models;
pub mod signer;
pub mod signing_credentials;

pub use ambient::{AmbientCredentials, AmbientError, AmbientKind, AmbientSource};
pub use classify::{Disposition, HumanReason, RetryReason, classify};
pub use client::{Answer, ClientBuildError, ClientOptions, Target, WorkspaceClient, resolve_endpoint};
pub use error::{ApiError, CloudError, ErrorBody, Operation, TransportKind};
pub use iam::{PasswordLogin, TokenCache};
pub use models::{CreateResponse, SessionState, ShowResponse};
pub use signing_credentials::{Credentials, Sensitive};
