//! Every manifest users apply passes `kubectl apply --dry-run=server` on the real control plane,
//! with the real kubectl (built from the pinned release's Go modules): the kustomize base, the
//! namespace-scoped variant, the optional components and the examples.

use crate::support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn kubectl(args: &[&str]) -> (bool, String) {
    let cp = support::control_plane::shared();
    let out = Command::new(support::control_plane::go_tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Creates a namespace the way kubectl apply would (so a later apply does not warn).
async fn ensure_namespace(name: &str) {
    let client = support::admin_client().await;
    if Api::<Namespace>::all(client)
        .get_opt(name)
        .await
        .unwrap()
        .is_none()
    {
        let (ok, out) = kubectl(&["create", "namespace", name, "--save-config"]);
        assert!(ok, "{out}");
    }
}

fn dry_run(args: &[&str]) {
    let mut full = vec!["apply", "--dry-run=server"];
    full.extend_from_slice(args);
    let (ok, out) = kubectl(&full);
    assert!(ok, "kubectl {} failed:\n{out}", full.join(" "));
    // Objects another test created without kubectl (the CRD) draw a last-applied note; any
    // other warning (an unknown field, a deprecated API, a schema format) fails the test.
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("Warning") && !l.contains("last-applied-configuration"))
        .collect();
    assert!(warnings.is_empty(), "kubectl {} warned:\n{out}", full.join(" "));
    assert!(out.contains("(server dry run)"), "{out}");
}

#[tokio::test]
async fn the_kustomize_base_and_variants_pass_a_server_side_dry_run() {
    // A dry run creates nothing, so the namespaces the manifests live in must exist.
    ensure_namespace("workspace-assist").await;
    ensure_namespace("team-a").await;
    dry_run(&["-k", "deploy/"]);
    dry_run(&["-k", "deploy/namespaced"]);

    // The optional components, through an overlay as users would write it. The ServiceMonitor
    // and PrometheusRule kinds come from the Prometheus Operator; minimal CRDs stand in here.
    for (plural, kind) in [
        ("servicemonitors", "ServiceMonitor"),
        ("prometheusrules", "PrometheusRule"),
    ] {
        support::install_crd(&support::admin_client().await, &stand_in_crd(plural, kind)).await;
    }
    let overlay = overlay(&[
        "servicemonitor",
        "prometheusrule",
        "networkpolicy",
        "sharding",
        "agency-bindings",
    ]);
    dry_run(&["-k", overlay.path().to_str().unwrap()]);
}

/// A CRD of the Prometheus Operator's group that accepts any object of `kind`.
fn stand_in_crd(
    plural: &str,
    kind: &str,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let singular = kind.to_lowercase();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.monitoring.coreos.com") },
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": { "plural": plural, "singular": singular, "kind": kind },
            "versions": [{ "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } }]
        }
    }))
    .unwrap()
}

/// An overlay of the base with these components, as users would write it.
fn overlay(components: &[&str]) -> tempfile::TempDir {
    // Kustomize takes only relative paths to other kustomizations.
    let overlay = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let deploy = relative(overlay.path(), &Path::new(ROOT).join("deploy"));
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        deploy.join("base").display()
    );
    for c in components {
        text.push_str(&format!("  - {}\n", deploy.join("components").join(c).display()));
    }
    std::fs::write(overlay.path().join("kustomization.yaml"), text).unwrap();
    overlay
}

#[tokio::test]
async fn each_credentials_component_passes_a_dry_run_and_sets_its_source() {
    ensure_namespace("workspace-assist").await;
    for (component, source) in [
        ("credentials-oidc", "oidc"),
        ("credentials-pod-identity", "pod-identity"),
        ("credentials-ecs-agency", "ecs-metadata"),
    ] {
        // With the networkpolicy component too, as a careful user would run it.
        let overlay = overlay(&[component, "networkpolicy"]);
        dry_run(&["-k", overlay.path().to_str().unwrap()]);
        let (ok, out) = kubectl(&["kustomize", overlay.path().to_str().unwrap()]);
        assert!(ok, "{out}");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let env: Vec<(String, String)> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(
            value("AMBIENT_CREDENTIALS").as_deref(),
            Some(source),
            "{component}"
        );
        assert!(
            value("DEFAULT_CREDENTIALS_NAMESPACES").is_some(),
            "{component}: the identity is for the namespaces an admin allows"
        );
        assert!(value("POD_NAME").is_some(), "{component}: the base's env is kept");
        // The flags the operator reads from these variables parse.
        let (source_var, namespaces) = (
            value("AMBIENT_CREDENTIALS").unwrap(),
            value("DEFAULT_CREDENTIALS_NAMESPACES").unwrap(),
        );
        assert!(
            workspace_assist::controller::LabelSelector::parse(&namespaces).is_ok(),
            "{namespaces}"
        );
        assert!(
            <workspace_assist::workspace::AmbientKind as clap::ValueEnum>::from_str(&source_var, false)
                .is_ok()
        );
        if source == "oidc" {
            let file = value("HUAWEICLOUD_OIDC_TOKEN_FILE").unwrap();
            let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
            assert!(
                file.starts_with(mount),
                "the token file {file} is in the projected volume at {mount}"
            );
            let projected = &deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]
                ["serviceAccountToken"];
            assert!(
                projected["audience"].as_str().is_some_and(|a| !a.is_empty()),
                "the token has an audience"
            );
        }
    }
}

/// The path of `to` relative to the directory `from`.
fn relative(from: &Path, to: &Path) -> std::path::PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = std::path::PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in to.components().skip(common) {
        rel.push(c);
    }
    rel
}

#[tokio::test]
async fn the_examples_pass_a_server_side_dry_run() {
    let client = support::admin_client().await;
    support::install_project_crds(&client).await;
    let ns = support::fresh_namespace(&client, "examples").await;
    dry_run(&["-k", "deploy/examples", "-n", &ns]);
    // The AgencyBinding is cluster-scoped: applied on its own, without a namespace.
    dry_run(&["-f", "deploy/examples/agencybinding.yaml"]);
}

#[test]
fn the_namespaced_variant_has_no_cluster_wide_write_access() {
    let (ok, out) = kubectl(&["kustomize", "deploy/namespaced"]);
    assert!(ok, "{out}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or("").to_string(),
                d["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        !kinds.contains(&("ClusterRoleBinding".into(), "workspace-assist".into())),
        "{kinds:?}"
    );
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "workspace-assist-watched")
        .expect("a RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "team-a");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = serde_yaml::to_string(&deployment["spec"]["template"]["spec"]["containers"][0]["env"]).unwrap();
    assert!(env.contains("WATCH_NAMESPACE"), "{env}");
}
