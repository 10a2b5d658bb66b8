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

/// The example manifests parse as the project's types (the apiserver dry-run comes with the
/// deployment manifests).
#[test]
fn example_manifests_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        if value["kind"].as_str() == Some("RemoteAssistance") {
            let _: workspace_assist::resource::RemoteAssistance =
                serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "deploy/examples holds RemoteAssistance samples");
}
