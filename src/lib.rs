//! Kubernetes operator for Huawei Cloud Workspace remote assistance.
//!
//! [`resource`] defines the `RemoteAssistance` custom resource.

pub mod resource;

/// The CRDs this project installs, as one YAML stream.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&resource::RemoteAssistance::crd()).expect("a CRD always serializes")
}
