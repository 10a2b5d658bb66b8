//! The operator's own identity as credentials, end to end on the real control plane: CCE pod
//! identity, OIDC through STS and the ECS agency. The Kubernetes tokens are real ServiceAccount
//! tokens from the TokenRequest API; the simulator checks them against the same API server
//! (TokenReview for pod identity, the JWKS for OIDC).

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams};
use support::operator::phase;
use support::operator::{PROJECT, World, condition_reason, eventually};
use workspace_assist::controller::LabelSelector;
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::identity::{MetadataService, OidcProvider};
use workspace_assist::workspace::Operation;
use workspace_assist::workspace::{AmbientSource, IdToken};

const T: Duration = Duration::from_secs(60);
const OPERATOR_SA: &str = "workspace-assist";
const POD_IDENTITY_AUDIENCE: &str = "pod-identity.workspace.sim";
const STS_AUDIENCE: &str = "sts.workspace.sim";

fn source(ra: &RemoteAssistance) -> Option<String> {
    ra.status.as_ref().and_then(|s| s.credentials_source.clone())
}

/// A resource that names no Secret: it uses the operator's default credentials.
fn without_secret(w: &World, name: &str) -> serde_json::Value {
    let mut m = w.manifest(name, name);
    m["spec"].as_object_mut().unwrap().remove("credentialsSecretRef");
    m
}

/// The test namespace may use the default credentials.
fn allow_this_namespace(w: &World, config: &mut workspace_assist::controller::Config) {
    config.default_credentials_namespaces =
        Some(LabelSelector::parse(&format!("kubernetes.io/metadata.name={}", w.namespace)).unwrap());
}

/// Writes a token where the operator reads it, as the kubelet does for a projected volume.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The service-account issuer of the API server, from its OIDC discovery document.
async fn issuer(w: &World) -> String {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .unwrap();
    let discovery: serde_json::Value = w.client.request(request).await.expect("OIDC discovery");
    discovery["issuer"].as_str().expect("an issuer").to_string()
}

async fn create_and_wait_active(w: &World, name: &str) -> RemoteAssistance {
    w.create(without_secret(w, name)).await;
    w.wait_for(name, T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await
}

async fn delete_and_check_cancelled(w: &World, name: &str) {
    w.delete(name).await;
    w.wait_gone(name, T).await;
    let session = w.sim.session(PROJECT, name).expect("a session");
    assert!(!session.in_progress(), "the session of {name} is cancelled");
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, name), 1);
}

/// Starts the operator with the simulator as the node's metadata service, for this namespace.
fn start_with_ecs_agency(w: &mut World) {
    let mut config = w.config();
    config.ambient = Some(AmbientSource::EcsMetadata {
        endpoint: w.sim.endpoint().parse().unwrap(),
    });
    allow_this_namespace(w, &mut config);
    w.start_operator(config);
}

fn token_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("token")
}

/// The operator's ServiceAccount and a token of it for `audience`, in a file as the kubelet
/// projects it (the directory lives as long as the returned guard).
async fn operator_token(w: &World, audience: &str) -> (tempfile::TempDir, PathBuf) {
    w.create_service_account(OPERATOR_SA).await;
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir);
    write_token(&file, &w.request_token(OPERATOR_SA, audience).await);
    (dir, file)
}

#[tokio::test]
async fn pod_identity_end_to_end_with_rotation_refresh_and_revocation() {
    let mut w = World::new("ambient").await;
    let (_dir, file) = operator_token(&w, POD_IDENTITY_AUDIENCE).await;
    w.sim.trust_kubernetes(w.client.clone());
    let bound = format!("{}/{OPERATOR_SA}", w.namespace);
    w.sim.enable_pod_identity(POD_IDENTITY_AUDIENCE, &[&bound]);
    let mut config = w.config();
    config.ambient = Some(AmbientSource::PodIdentity {
        uri: w.sim.pod_identity_uri().parse().unwrap(),
        token_file: file.clone(),
    });
    allow_this_namespace(&w, &mut config);
    w.start_operator(config);

    // Five resources at once: one fetch for all of them.
    for i in 0..5 {
        w.create(without_secret(&w, &format!("pod-{i}"))).await;
    }
    for i in 0..5 {
        let ra = w
            .wait_for(&format!("pod-{i}"), T, "Active", |ra| {
                phase(ra) == Some(Phase::Active)
            })
            .await;
        assert_eq!(
            source(&ra).as_deref(),
            Some("pod-identity"),
            "status names the source, never a value"
        );
    }
    assert_eq!(
        w.sim.temporary_credentials_issued("pod-identity"),
        1,
        "one fetch shared by every caller"
    );
    delete_and_check_cancelled(&w, "pod-0").await;

    // The cloud says the credentials expired: fetched again once, and the call made once more.
    let refused_before = w.sim.requests().iter().filter(|r| r.status == 401).count();
    w.sim.expire_temporary_credentials();
    create_and_wait_active(&w, "pod-after-expiry").await;
    assert_eq!(w.sim.temporary_credentials_issued("pod-identity"), 2);
    assert_eq!(
        w.sim.requests().iter().filter(|r| r.status == 401).count(),
        refused_before + 1,
        "one refused call, then the retry"
    );

    // The kubelet rotates the token (here: the ServiceAccount is recreated, so the old token no
    // longer passes a TokenReview): the operator reads the file again on the next fetch.
    let sas: Api<ServiceAccount> = Api::namespaced(w.client.clone(), &w.namespace);
    let old_token = std::fs::read_to_string(&file).unwrap();
    sas.delete(OPERATOR_SA, &DeleteParams::default()).await.unwrap();
    w.create_service_account(OPERATOR_SA).await;
    write_token(&file, &w.request_token(OPERATOR_SA, POD_IDENTITY_AUDIENCE).await);
    // Only once the old token is refused does a fetch tell whether the file was read again
    // (the API server's ServiceAccount cache accepts it for a moment after the deletion).
    eventually(T, "the old token is refused", || async {
        workspace_assist::simulator::identity::review(&w.client, &old_token, POD_IDENTITY_AUDIENCE)
            .await
            .is_err()
    })
    .await;
    w.sim.expire_temporary_credentials();
    create_and_wait_active(&w, "pod-after-rotation").await;
    assert_eq!(w.sim.temporary_credentials_issued("pod-identity"), 3);
    assert_eq!(
        w.sim.identity_refusals("pod-identity"),
        0,
        "the rotated token was read"
    );

    // A revoked token (its ServiceAccount is gone): Stalled with a reason naming the source;
    // other resources wait out the source's backoff instead of asking again.
    sas.delete(OPERATOR_SA, &DeleteParams::default()).await.unwrap();
    // (The API server's ServiceAccount cache learns of the deletion a moment later.)
    let token = std::fs::read_to_string(&file).unwrap();
    eventually(T, "the token is revoked", || async {
        workspace_assist::simulator::identity::review(&w.client, &token, POD_IDENTITY_AUDIENCE)
            .await
            .is_err()
    })
    .await;
    w.sim.expire_temporary_credentials();
    let revoked_at = std::time::Instant::now();
    w.create(without_secret(&w, "pod-revoked")).await;
    let ra = w
        .wait_for("pod-revoked", T, "Stalled", |ra| {
            condition_reason(ra, "Stalled").as_deref() == Some("PodIdentityCredentialsFailed")
        })
        .await;
    let shown = serde_json::to_string(&ra.status).unwrap();
    assert!(!shown.contains(&token), "no token in status");
    assert!(
        shown.contains("pod-identity credentials"),
        "the message names the source: {shown}"
    );
    for i in 0..3 {
        w.create(without_secret(&w, &format!("pod-revoked-{i}"))).await;
    }
    for i in 0..3 {
        w.wait_for(&format!("pod-revoked-{i}"), T, "Stalled", |ra| {
            condition_reason(ra, "Stalled").as_deref() == Some("PodIdentityCredentialsFailed")
        })
        .await;
    }
    // Four resources, each reconciled several times (and the open sessions polled every half
    // second), yet the source is asked with a doubling backoff: 1 s, 2 s, 4 s…
    let (refusals, elapsed) = (
        w.sim.identity_refusals("pod-identity"),
        revoked_at.elapsed().as_secs_f64(),
    );
    assert!(
        refusals as f64 <= 2.0 + (elapsed + 1.0).log2(),
        "the source is not hammered: {refusals} refusals in {elapsed:.1}s"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn temporary_credentials_are_refreshed_before_they_expire() {
    let mut w = World::new("ambient").await;
    w.sim.serve_metadata(MetadataService {
        agency: true,
        session_tokens: true,
    });
    w.sim.set_temporary_lifetime(Duration::from_secs(3));
    start_with_ecs_agency(&mut w);
    let ra = create_and_wait_active(&w, "ecs-0").await;
    assert_eq!(source(&ra).as_deref(), Some("ecs-metadata"));
    assert_eq!(w.sim.temporary_credentials_issued("ecs-metadata"), 1);
    // Let the first credentials' life pass: the next call must use new ones, fetched before it
    // (the refresh is due at half their life), so no call is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    create_and_wait_active(&w, "ecs-1").await;
    // (ecs-0's polls every half second refresh them too: at least one refresh.)
    assert!(
        w.sim.temporary_credentials_issued("ecs-metadata") >= 2,
        "refreshed"
    );
    assert!(
        w.sim.requests().iter().all(|r| r.status != 401),
        "no call was made with expired credentials"
    );
    delete_and_check_cancelled(&w, "ecs-1").await;
    w.stop_operator().await;
}

#[tokio::test]
async fn ecs_agency_without_session_tokens_and_without_an_agency() {
    let mut w = World::new("ambient").await;
    // An older metadata service: the token PUT answers 404, the GET goes without a token.
    w.sim.serve_metadata(MetadataService {
        agency: true,
        session_tokens: false,
    });
    start_with_ecs_agency(&mut w);
    create_and_wait_active(&w, "ecs-old").await;
    delete_and_check_cancelled(&w, "ecs-old").await;
    w.stop_operator().await;

    // A node without an agency: Stalled, naming the source.
    let mut w = World::new("ambient").await;
    w.sim.serve_metadata(MetadataService {
        agency: false,
        session_tokens: true,
    });
    start_with_ecs_agency(&mut w);
    w.create(without_secret(&w, "ecs-none")).await;
    let ra = w
        .wait_for("ecs-none", T, "Stalled", |ra| {
            condition_reason(ra, "Stalled").as_deref() == Some("EcsMetadataCredentialsFailed")
        })
        .await;
    let message = ra
        .status
        .unwrap()
        .last_error
        .unwrap()
        .error_message
        .unwrap_or_default();
    assert!(message.contains("Cloud Service Agency"), "{message}");
    // The source's own words (they may name agencies and accounts) stay in the operator's log.
    assert!(
        !message.contains("Please configure"),
        "the source's message is not copied into status: {message}"
    );
    assert!(
        w.sim.requests().is_empty(),
        "no Workspace call without credentials"
    );
    w.stop_operator().await;
}

const PROVIDER_URN: &str = "iam::acme:identityProvider:cluster";
const AGENCY_URN: &str = "iam::acme:agency:workspace-assist";

/// The cluster as an IAM OIDC identity provider: its issuer, the STS audience, and the
/// operator's ServiceAccount (of `w`'s namespace) allowed to assume the agency.
async fn register_cluster(w: &World, sim: &workspace_assist::simulator::Simulator) {
    sim.trust_kubernetes(w.client.clone());
    let provider = OidcProvider {
        issuer: issuer(w).await,
        audience: STS_AUDIENCE.into(),
        agencies: [AGENCY_URN.to_string()].into(),
        subjects: [format!("system:serviceaccount:{}:{OPERATOR_SA}", w.namespace)].into(),
    };
    sim.add_oidc_provider(PROVIDER_URN, provider);
}

/// The operator's OIDC source: STS at `sim`, the ID token in `file`.
fn oidc_source(sim: &workspace_assist::simulator::Simulator, file: &Path) -> AmbientSource {
    AmbientSource::Oidc {
        sts_endpoint: sim.endpoint().parse().unwrap(),
        provider_urn: PROVIDER_URN.into(),
        agency_urn: AGENCY_URN.into(),
        session_name: "workspace-assist".into(),
        duration_seconds: 900,
        id_token: IdToken::File(file.to_path_buf()),
    }
}

#[tokio::test]
async fn oidc_through_sts_with_a_projected_service_account_token() {
    let mut w = World::new("ambient").await;
    let (_dir, file) = operator_token(&w, STS_AUDIENCE).await;
    register_cluster(&w, &w.sim).await;
    let mut config = w.config();
    config.ambient = Some(oidc_source(&w.sim, &file));
    allow_this_namespace(&w, &mut config);
    w.start_operator(config);
    let ra = create_and_wait_active(&w, "oidc-0").await;
    assert_eq!(source(&ra).as_deref(), Some("oidc"));
    assert_eq!(w.sim.temporary_credentials_issued("oidc"), 1);
    delete_and_check_cancelled(&w, "oidc-0").await;
    w.stop_operator().await;

    // A token for another audience is refused by STS: Stalled, naming the source.
    let mut w2 = World::new("ambient").await;
    register_cluster(&w, &w2.sim).await;
    let other = tempfile::tempdir().unwrap();
    let other_file = token_file(&other);
    write_token(
        &other_file,
        &w.request_token(OPERATOR_SA, "some-other-audience").await,
    );
    let mut config = w2.config();
    config.ambient = Some(oidc_source(&w2.sim, &other_file));
    allow_this_namespace(&w2, &mut config);
    w2.start_operator(config);
    w2.create(without_secret(&w2, "oidc-wrong-audience")).await;
    w2.wait_for("oidc-wrong-audience", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").as_deref() == Some("OidcCredentialsFailed")
    })
    .await;
    assert_eq!(w2.sim.temporary_credentials_issued("oidc"), 0);
    assert_eq!(w2.sim.identity_refusals("oidc"), 1);
    assert!(w2.sim.requests().is_empty());
    w2.stop_operator().await;
}

#[tokio::test]
async fn the_operators_identity_serves_only_namespaces_the_admin_allowed() {
    let mut w = World::new("ambient").await;
    w.sim.serve_metadata(MetadataService {
        agency: true,
        session_tokens: true,
    });
    let mut config = w.config();
    config.ambient = Some(AmbientSource::EcsMetadata {
        endpoint: w.sim.endpoint().parse().unwrap(),
    });
    // The default: no namespace may.
    config.default_credentials_namespaces = None;
    w.start_operator(config);
    w.create(without_secret(&w, "not-allowed")).await;
    w.wait_for("not-allowed", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").as_deref() == Some("DefaultCredentialsNotAllowed")
    })
    .await;
    assert_eq!(
        w.sim.temporary_credentials_issued("ecs-metadata"),
        0,
        "the identity is not even asked"
    );
    assert!(w.sim.requests().is_empty(), "no call");
    // A resource with its own Secret is not affected, and says where its credentials came from.
    w.create(w.manifest("own-secret", "own-secret")).await;
    let ra = w
        .wait_for("own-secret", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    assert_eq!(source(&ra).as_deref(), Some("Secret"));
    w.stop_operator().await;
}
