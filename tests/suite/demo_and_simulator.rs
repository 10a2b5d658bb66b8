//! The README's first command (the local demo) and the standalone simulator, run as the real
//! binary.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use workspace_assist::workspace::{
    AmbientCredentials, AmbientSource, ClientOptions, CloudError, Credentials, Sensitive, Target,
    WorkspaceClient, resolve_endpoint,
};

const BIN: &str = env!("CARGO_BIN_EXE_workspace-assist");

#[tokio::test]
async fn the_demo_runs_the_whole_lifecycle_and_leaves_nothing_behind() {
    let build_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("control-plane");
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(BIN)
            .args(["demo", "--build-dir"])
            .arg(&build_dir)
            .output(),
    )
    .await
    .expect("the demo finishes")
    .expect("running the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "alice    Active      True",
        "bob      Active      True",
        "alice    Cancelled   True",
        "bob      (gone)",
        "alice    (gone)",
        "2 CreateRemoteAssistance",
        "3 CancelRemoteAssistance",
        "the operator cancelled the session (reason DeadlineExceeded)",
        "deleted by the operator 2s after it finished (ttlAfterFinished)",
        "nothing left running",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("demo-secret-key"), "the demo prints no secret");
    let pid: u32 = stdout
        .split("harness pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("the demo names the harness pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the control plane is gone"
    );
}

#[tokio::test]
async fn the_simulate_command_serves_the_contract_with_flags() {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            "AKSIM:sk-sim",
            "--open-session",
            "proj/desk-1",
            "--fault",
            "operation=cancel,desktop=desk-1,status=503,code=APIGW.0308",
            "--metadata-agency",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the simulator");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = loop {
        let line = lines.next_line().await.unwrap().expect("a readiness line");
        if let Some(e) = line.strip_prefix("SIMULATOR_READY ") {
            break e.to_string();
        }
    };
    let client = WorkspaceClient::new(&ClientOptions::default()).unwrap();
    let creds = Credentials::AkSk {
        access_key_id: "AKSIM".into(),
        secret_access_key: Sensitive::new("sk-sim"),
        security_token: None,
    };
    let target = Target {
        endpoint: resolve_endpoint(None, Some(&endpoint)).unwrap(),
        project_id: "proj".into(),
        desktop_id: "desk-1".into(),
    };
    assert!(
        client.show(&target, &creds).await.unwrap().value.in_progress(),
        "--open-session"
    );
    let throttled = client.cancel(&target, &creds).await.unwrap_err();
    assert!(
        matches!(&throttled, CloudError::Api(e) if e.http_status == 503 && e.body.code.as_deref() == Some("APIGW.0308")),
        "{throttled:?}"
    );
    client
        .cancel(&target, &creds)
        .await
        .expect("the fault was used once");
    let wrong = Credentials::AkSk {
        access_key_id: "AKSIM".into(),
        secret_access_key: Sensitive::new("nope"),
        security_token: None,
    };
    assert_eq!(
        client.show(&target, &wrong).await.unwrap_err().http_status(),
        Some(401)
    );

    // --metadata-agency: the ECS metadata service's temporary credentials work on the API.
    let source = AmbientCredentials::new(AmbientSource::EcsMetadata {
        endpoint: endpoint.parse().unwrap(),
    });
    let temporary = source
        .credentials(client.http())
        .await
        .expect("temporary credentials from the metadata service");
    assert!(matches!(
        &temporary,
        Credentials::AkSk {
            security_token: Some(_),
            ..
        }
    ));
    assert!(
        client.show(&target, &temporary).await.is_ok(),
        "signed with X-Security-Token"
    );

    let pid = child.id().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the simulator exits cleanly on SIGTERM: {status}"
    );
}
