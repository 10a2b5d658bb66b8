//! Huawei Cloud Workspace remote-assistance API: the client, AK/SK signing, typed errors and the
//! classification of every answer. Nothing here knows about Kubernetes.

mod agency;
mod ambient;
mod classify;
mod client;
mod error;
mod iam;
mod models;
pub mod signer;
mod signing_credentials;

pub use agency::{
    AgencyRequest, DelegatingAccount, GLOBAL_IAM_ENDPOINT, SECURITY_TOKENS_PATH, assume_agency,
};
pub use ambient::{
    AmbientCredentials, AmbientError, AmbientKind, AmbientSource, DEFAULT_METADATA_ENDPOINT, IdToken,
    TemporaryCredentials, parse_temporary_credentials,
};
pub use classify::{Disposition, HumanReason, RetryReason, classify};
pub use client::{Answer, ClientBuildError, ClientOptions, Target, WorkspaceClient, resolve_endpoint};
pub use error::{
    ApiError, CloudError, ErrorBody, MAX_ENCODED_MESSAGE_BYTES, MAX_ERROR_CODE_BYTES, MAX_ERROR_TEXT_BYTES,
    Operation, TransportKind, parse_error_body,
};
pub use iam::{PasswordLogin, TokenCache, iam_endpoint_for_region};
pub use models::{CreateResponse, STATUS_CLOSE, SessionState, ShowResponse};
pub use signing_credentials::{Credentials, Sensitive};
