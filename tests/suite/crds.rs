//! The CRDs committed in `crds/` must be exactly what the Rust types generate, and the apiserver
//! must accept them (a non-structural schema is refused).

use crate::support;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, generated) in workspace_assist::crd_files() {
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file} holds the generated CRD: {e}"));
        assert!(
            committed == generated,
            "crds/{file} has drifted from the Rust types: run `cargo run -- crd --dir crds` and commit it"
        );
    }
}

/// `kubectl explain` shows descriptions as written: no line break in the middle of a sentence.
#[test]
fn descriptions_read_as_prose() {
    fn check(v: &serde_json::Value, path: &str) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| {
                if let (Some(text), "description") = (v.as_str(), k.as_str()) {
                    for line in text.split("\n\n").flat_map(|p| p.lines().skip(1)) {
                        assert!(
                            line.starts_with("- ") || line.starts_with("* "),
                            "{path}.description breaks mid-paragraph before {line:?}"
                        );
                    }
                }
                check(v, &format!("{path}.{k}"));
            }),
            serde_json::Value::Array(items) => items.iter().for_each(|i| check(i, path)),
            _ => {}
        }
    }
    for (file, yaml) in workspace_assist::crd_files() {
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        check(&crd, &file);
    }
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
        } else if value["kind"].as_str() == Some("AgencyBinding") {
            let _: workspace_assist::agency_binding::AgencyBinding =
                serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    assert!(seen >= 2, "deploy/examples holds RemoteAssistance samples");
}
