//! Kubernetes operator for Huawei Cloud Workspace remote assistance.
//!
//! - [`resource`]: the `RemoteAssistance` custom resource.
//! - [`workspace`]: the cloud client (signing, errors, classification); no Kubernetes inside.

pub mod cli;
pub mod controller;
#[cfg(feature = "dev-tools")]
pub mod devenv;
pub mod leader;
pub mod memory;
pub mod resource;
pub mod simulator;
pub mod telemetry;
pub mod text;
pub mod workspace;

/// The CRDs this project installs, as one YAML stream.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&resource::RemoteAssistance::crd()).expect("a CRD always serializes")
}

/// Installs rustls's ring provider as the process default (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
