//! The CRDs committed in `crds/` must be exactly what the Rust types generate, and the apiserver
//! must accept them (a non-structural schema is refused).

mod support;

#[test]
fn committed_crds_match_the_rust_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/remoteassistances.workspace.assist.dev.yaml");
    let committed = std::fs::read_to_string(&path).expect("crds/ holds the generated CRD");
    let generated = workspace_assist::crds_yaml();
    assert!(
        committed == generated,
        "crds/ has drifted from the Rust types: run `cargo run -- crd > {}` and commit it",
        "crds/remoteassistances.workspace.assist.dev.yaml"
    );
}

#[tokio::test]
async fn the_apiserver_accepts_and_establishes_the_crds() {
    let client = support::admin_client().await;
    support::install_project_crds(&client).await;
}
