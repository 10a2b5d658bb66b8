//! No secret value (secret key, security token, IAM token, invitation code, share password or
//! link) appears in the operator's logs at any level, in Events or in status. The operator runs
//! as its real binary at trace level, through success, a 403 and a 401.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::operator::{AK, PROJECT, SK, World, condition};
use tokio::io::AsyncReadExt;
use workspace_assist::resource::Phase;
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "MIIZtokenSECRETvalue-9f8e7d6c5b4a";
const TEMP_SK: &str = "temporary-secret-key-Qw3Er5Ty7";
const SECURITY_TOKEN: &str = "security-token-SECRET-Zx9Cv8Bn7";
const PASSWORD: &str = "iam-PASSWORD-secret-Lm4Np6";

#[tokio::test]
async fn secrets_never_reach_logs_events_or_status() {
    let w = World::new("leaks").await;
    w.sim.add_token(TOKEN);
    w.sim
        .add_temporary_access_key("AKTEMPORARY000000001", TEMP_SK, SECURITY_TOKEN);
    w.put_secret("token-credentials", &[("token", TOKEN)]).await;
    w.put_secret(
        "temporary-credentials",
        &[
            ("accessKeyId", "AKTEMPORARY000000001"),
            ("secretAccessKey", TEMP_SK),
            ("securityToken", SECURITY_TOKEN),
        ],
    )
    .await;
    w.sim.add_iam_user("acme", "helpdesk", PASSWORD);
    w.put_secret(
        "password-credentials",
        &[
            ("username", "helpdesk"),
            ("password", PASSWORD),
            ("domainName", "acme"),
            ("iamEndpoint", &w.sim.endpoint()),
        ],
    )
    .await;
    w.put_secret(
        "wrong-credentials",
        &[
            ("accessKeyId", AK),
            ("secretAccessKey", "wrong-but-still-secret-SK-value"),
        ],
    )
    .await;
    let desks = ["desk-1", "desk-2", "desk-3", "desk-4", "desk-6"];
    let sessions: Vec<_> = desks.iter().map(|d| w.sim.open_session(PROJECT, d)).collect();
    w.sim.inject(FaultRule::new(
        "desk-2",
        Operation::CancelRemoteAssistance,
        vec![Fault::Error {
            status: 403,
            code: "WKS.00010003".into(),
            message: "denied".into(),
            detail: None,
            encoded_authorization_message: Some("ENC".into()),
        }],
    ));

    let cp = support::control_plane::shared();
    let metrics_address = format!("127.0.0.1:{}", support::process::free_port());
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_workspace-assist"))
        .args([
            "run",
            "--namespace",
            &w.namespace,
            "--log-level",
            "trace",
            "--backoff-base",
            "200ms",
            "--leader-elect",
            "false",
        ])
        .args([
            "--metrics-address",
            &metrics_address,
            "--allowed-endpoint",
            &w.sim.endpoint(),
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the operator binary");
    let mut stdout = operator.stdout.take().unwrap();
    let mut stderr = operator.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let secret_for = [
        "cloud-credentials",
        "cloud-credentials",
        "token-credentials",
        "temporary-credentials",
        "password-credentials",
    ];
    for (i, desk) in desks.iter().enumerate() {
        let mut m = w.manifest(&format!("ra-{i}"), desk);
        m["spec"]["credentialsSecretRef"]["name"] = json!(secret_for[i]);
        w.create(m).await;
    }
    let mut wrong = w.manifest("ra-wrong", "desk-5");
    wrong["spec"]["credentialsSecretRef"]["name"] = json!("wrong-credentials");
    w.create(wrong).await;

    let mut statuses = Vec::new();
    for i in 0..desks.len() {
        statuses.push(
            w.wait_for(&format!("ra-{i}"), T, "Active", |ra| {
                ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
            })
            .await,
        );
    }
    statuses.push(
        w.wait_for("ra-wrong", T, "Stalled", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await,
    );
    for i in 0..desks.len() {
        w.delete(&format!("ra-{i}")).await;
    }
    statuses.push(
        w.wait_for("ra-1", T, "Stalled on 403", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await,
    );
    for i in [0, 2, 3, 4] {
        w.wait_gone(&format!("ra-{i}"), T).await;
    }
    workspace_assist::install_crypto_provider();
    let metrics = reqwest::get(format!("http://{metrics_address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("workspace_assist_cloud_requests_total"),
        "/metrics was read"
    );

    // Stop the operator gracefully and collect everything it wrote.
    let pid = operator.id().unwrap() as i32;
    sigterm(pid);
    let status = tokio::time::timeout(T, operator.wait())
        .await
        .expect("the operator exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "the operator exited with {status}");
    let logs = format!("{}\n{}", out.await.unwrap(), err.await.unwrap());
    assert!(
        logs.contains("remote assistance cancelled"),
        "the logs are captured (trace level):\n{}",
        &logs[..logs.len().min(2000)]
    );

    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.namespace);
    let events = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let statuses = serde_json::to_string(&statuses).unwrap();

    // The decoded values of every secret: the Secrets' keys, passwords and tokens, the tokens IAM
    // issued for the password login, and each session's invitation code, password and links.
    let mut secrets: Vec<String> = vec![
        SK.into(),
        TOKEN.into(),
        TEMP_SK.into(),
        SECURITY_TOKEN.into(),
        PASSWORD.into(),
        "wrong-but-still-secret-SK-value".into(),
    ];
    let issued: Vec<String> = w.sim.known_tokens().into_iter().filter(|t| t != TOKEN).collect();
    assert!(!issued.is_empty(), "IAM issued a token for the password login");
    secrets.extend(issued);
    for s in &sessions {
        secrets.push(s.invitation_code.clone());
        secrets.push(s.share_space_passwd.clone());
        secrets.push(format!("/s/{}?code=", s.share_space_id));
    }
    secrets.extend(support::session_secrets(&w.sim));
    // Each as it is, base64-encoded, and as a Debug of its bytes.
    for (what, text) in [
        ("logs", &logs),
        ("Events", &events),
        ("status", &statuses),
        ("metrics", &metrics),
    ] {
        assert_eq!(
            support::leaked(text, &secrets),
            None,
            "a secret value appears in the {what}"
        );
        assert!(
            !text.contains("share.example.com/s/") && !text.contains("share.example.internal/s/"),
            "a share link appears in the {what}"
        );
    }
}

/// Sends SIGTERM through the `kill` command.
fn sigterm(pid: i32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// The operator's own identity (CCE pod identity here): its ServiceAccount token and the
/// temporary credentials issued for it never appear either, also at trace level.
#[tokio::test]
async fn the_operators_own_identity_never_reaches_logs_events_status_or_metrics() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    const AUDIENCE: &str = "pod-identity.workspace.sim";
    let w = World::new("leaks-ambient").await;
    let sas: Api<ServiceAccount> = Api::namespaced(w.client.clone(), &w.namespace);
    sas.create(
        &Default::default(),
        &serde_json::from_value(json!({ "metadata": { "name": "workspace-assist" } })).unwrap(),
    )
    .await
    .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![AUDIENCE.into()]),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    let sa_token = sas
        .create_token_request("workspace-assist", &Default::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &sa_token).unwrap();
    w.sim.trust_kubernetes(w.client.clone());
    w.sim
        .enable_pod_identity(AUDIENCE, &[&format!("{}/workspace-assist", w.namespace)]);
    // Short-lived credentials: fetched again during the run, so several are issued.
    w.sim.set_temporary_lifetime(Duration::from_secs(4));

    let cp = support::control_plane::shared();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", support::process::free_port())
        .parse()
        .unwrap();
    let mut command = tokio::process::Command::new(support::process::BIN);
    command
        .args([
            "run",
            "--namespace",
            &w.namespace,
            "--log-level",
            "trace",
            "--leader-elect",
            "false",
            "--ambient-credentials",
            "pod-identity",
        ])
        .args([
            "--default-credentials-namespaces",
            &format!("kubernetes.io/metadata.name={}", w.namespace),
        ])
        .args([
            "--metrics-address",
            &metrics.to_string(),
            "--allowed-endpoint",
            &w.sim.endpoint(),
            "--poll-interval",
            "1s",
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HC_CONTAINER_CREDENTIALS_FULL_URI", w.sim.pod_identity_uri())
        .env("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    let mut operator = support::process::OperatorProcess::start(command, metrics);

    let names = ["own-0", "own-1", "own-2"];
    for n in names {
        let mut m = w.manifest(n, n);
        m["spec"].as_object_mut().unwrap().remove("credentialsSecretRef");
        w.create(m).await;
    }
    let mut statuses = Vec::new();
    for n in names {
        statuses.push(
            w.wait_for(n, T, "Active", |ra| {
                ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
            })
            .await,
        );
    }
    // Past the credentials' lifetime: polls need new ones.
    support::operator::eventually(T, "credentials fetched again", || async {
        w.sim.temporary_credentials_issued("pod-identity") >= 2
    })
    .await;
    for n in names {
        w.delete(n).await;
    }
    for n in names {
        w.wait_gone(n, T).await;
    }
    let metrics_text = operator.get("/metrics").await.1;
    assert!(
        metrics_text.contains("workspace_assist_cloud_requests_total"),
        "/metrics was read"
    );
    operator.signal("-TERM");
    let status = operator.wait(T).await;
    assert!(status.success(), "the operator exited with {status}");
    let logs = operator.logs();
    assert!(
        logs.contains("fetched temporary credentials"),
        "the logs are captured (trace level)"
    );

    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.namespace);
    let events = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let statuses = serde_json::to_string(&statuses).unwrap();
    let mut secrets = vec![sa_token];
    let issued = w.sim.issued_temporary_secrets();
    assert!(issued.len() >= 4, "the simulator reports what it issued");
    secrets.extend(issued);
    secrets.extend(support::session_secrets(&w.sim));
    for (what, text) in [
        ("logs", &logs),
        ("Events", &events),
        ("status", &statuses),
        ("metrics", &metrics_text),
    ] {
        assert_eq!(
            support::leaked(text, &secrets),
            None,
            "a secret value appears in the {what}"
        );
    }
}
