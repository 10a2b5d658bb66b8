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

/// Every example manifest passes a server-side dry run on the real apiserver.
#[tokio::test]
async fn example_manifests_pass_a_server_side_dry_run() {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let client = support::admin_client().await;
    support::install_project_crds(&client).await;
    let ns = support::fresh_namespace(&client, "examples").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files {
        let obj: DynamicObject = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let types = obj.types.clone().expect("apiVersion and kind");
        let (group, version) = types.api_version.rsplit_once('/').unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let plural = format!("{}s", types.kind.to_lowercase());
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, &plural));
        let params = PostParams { dry_run: true, ..PostParams::default() };
        api.create(&params, &obj).await.unwrap_or_else(|e| panic!("{} fails a server-side dry run: {e}", path.display()));
    }
}

/// The example manifests parse as the project's types (the apiserver dry-run comes with the
/// deployment manifests).
#[test]
fn example_manifests_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
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
