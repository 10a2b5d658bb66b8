//! Shared support for the integration tests: the real control plane, admin clients, a fresh
//! namespace per test, and the project's CRDs installed and Established.
#![allow(dead_code)]

pub mod debian;
pub mod operator;
pub mod process;
pub mod proxy;
pub mod shipped;

/// The project's control plane, started once per test binary.
pub mod control_plane {
    use std::sync::OnceLock;

    pub use workspace_assist::devenv::control_plane::*;

    /// The harness built into this test run's target directory.
    pub fn harness() -> Harness {
        Harness::new(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("control-plane"))
    }

    /// A Go tool of the harness module (`kubectl`, `kstatus`, `luahealth`), built when needed.
    pub fn go_tool(name: &str) -> std::path::PathBuf {
        build_tool(&harness(), &format!("./cmd/{name}"), name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The control plane shared by every test of this test binary, started on first use.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| ControlPlane::start(&harness()).unwrap_or_else(|e| panic!("{e:#}")))
    }
}

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

pub use control_plane::ControlPlane;

/// Field manager the tests use for their own writes.
pub const TEST_MANAGER: &str = "integration-tests";

/// A client with the admin identity of the given control plane.
pub async fn client_for(cp: &ControlPlane) -> Client {
    workspace_assist::devenv::demo::client_for(cp)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// An admin client of the shared control plane. Each test gets its own (a client belongs to the
/// tokio runtime that made it).
pub async fn admin_client() -> Client {
    client_for(control_plane::shared()).await
}

/// Creates a namespace with a unique name starting with `prefix`.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    name
}

/// Server-side applies a CRD and waits until the apiserver reports it Established.
pub async fn install_crd(client: &Client, crd: &CustomResourceDefinition) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD has a name");
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    workspace_assist::devenv::demo::wait_established(client, &name)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The project's CRDs as committed in `crds/`.
pub fn project_crds() -> Vec<CustomResourceDefinition> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reading crds/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).expect("reading a CRD file");
            let value: serde_yaml::Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", f.display()));
            (value["kind"] == "CustomResourceDefinition").then(|| {
                serde_yaml::from_value(value).unwrap_or_else(|e| panic!("parsing {}: {e}", f.display()))
            })
        })
        .collect()
}

/// Installs every CRD in `crds/` and waits until each is Established.
pub async fn install_project_crds(client: &Client) {
    for crd in project_crds() {
        install_crd(client, &crd).await;
    }
}

/// The forms in which a secret value could show up in text: as it is, base64-encoded (as in a
/// Secret's data), and as a `Debug` of its bytes.
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        secret.to_string(),
        b64.encode(secret),
        b64.encode(secret).trim_end_matches('=').to_string(),
        format!("{:?}", secret.as_bytes()),
    ]
}

/// The first form of any of `secrets` found in `text` (None: no leak).
pub fn leaked<'a>(text: &str, secrets: impl IntoIterator<Item = &'a String>) -> Option<String> {
    secrets
        .into_iter()
        .flat_map(|s| secret_forms(s))
        .find(|form| text.contains(form.as_str()))
}

/// The secret values of every session the simulator ever started: the invitation code, the
/// share space password and the share links' secret part.
pub fn session_secrets(sim: &workspace_assist::simulator::Simulator) -> Vec<String> {
    sim.all_sessions()
        .into_iter()
        .flat_map(|s| {
            [
                s.invitation_code,
                s.share_space_passwd,
                format!("/s/{}?code=", s.share_space_id),
            ]
        })
        .collect()
}
