//! Kubernetes operator for Huawei Cloud Workspace remote assistance.
//!
//! - [`resource`]: the `RemoteAssistance` custom resource.
//! - [`agency_binding`]: the `AgencyBinding` custom resource (agencies of other accounts).
//! - [`workspace`]: the cloud client (signing, errors, classification); no Kubernetes inside.

pub mod agency_binding;
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

/// The CRDs this project installs, as one YAML stream (the files of `crds/`, in order).
pub fn crds_yaml() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Each CRD as the file `crds/` holds it: (file name, YAML). Descriptions come from doc
/// comments; their line breaks inside a paragraph are folded (as controller-gen does), so that
/// `kubectl explain` reads as prose.
pub fn crd_files() -> Vec<(String, String)> {
    [resource::crd(), agency_binding::crd()]
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
            let mut crd = serde_json::to_value(crd).expect("a CRD always serializes");
            fold_descriptions(&mut crd);
            (
                file,
                serde_yaml::to_string(&crd).expect("a CRD always serializes"),
            )
        })
        .collect()
}

/// Folds the line breaks inside each paragraph of every `description` (paragraphs, separated by
/// a blank line, and list items stay on lines of their own).
fn fold_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => *text = fold(text),
                    other => fold_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fold_descriptions),
        _ => {}
    }
}

fn fold(text: &str) -> String {
    let paragraph = |p: &str| {
        let mut out = String::new();
        for line in p.lines().map(str::trim) {
            if !out.is_empty() {
                out.push(if line.starts_with("- ") || line.starts_with("* ") {
                    '\n'
                } else {
                    ' '
                });
            }
            out.push_str(line);
        }
        out
    };
    text.split("\n\n").map(paragraph).collect::<Vec<_>>().join("\n\n")
}

/// Installs rustls's ring provider as the process default (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptions_fold_into_prose_keeping_paragraphs_and_lists() {
        assert_eq!(
            super::fold("One line\nwraps here.\n\nA list:\n- a\n- b"),
            "One line wraps here.\n\nA list:\n- a\n- b"
        );
    }
}
