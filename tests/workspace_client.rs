//! The cloud client against the project's Workspace simulator: signing, tokens, bodies, errors
//! and injected faults, each classified as the operator will act on it.

use std::time::Duration;

use workspace_assist::simulator::{Fault, FaultRule, Simulator};
use workspace_assist::workspace::{
    ClientOptions, CloudError, Credentials, Disposition, HumanReason, Operation, RetryReason, Sensitive,
    Target, TransportKind, WorkspaceClient, classify, resolve_endpoint,
};

const PROJECT: &str = "0bec5db98280d2d02fd6c00c2de791ce";

fn aksk(ak: &str, sk: &str) -> Credentials {
    Credentials::AkSk {
        access_key_id: ak.into(),
        secret_access_key: Sensitive::new(sk),
        security_token: None,
    }
}

fn target(sim: &Simulator, desktop: &str) -> Target {
    Target {
        endpoint: resolve_endpoint(None, Some(&sim.endpoint())).unwrap(),
        project_id: PROJECT.into(),
        desktop_id: desktop.into(),
    }
}

fn client() -> WorkspaceClient {
    WorkspaceClient::new(&ClientOptions {
        timeout: Duration::from_millis(800),
        ..ClientOptions::default()
    })
    .unwrap()
}

fn disposition(e: &CloudError) -> Disposition {
    classify(e, &[])
}

#[tokio::test]
async fn signed_cancel_then_not_found() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AKTEST", "sk-test-secret");
    sim.open_session(PROJECT, "desk-1");
    let c = client();
    let creds = aksk("AKTEST", "sk-test-secret");

    let done = c
        .cancel(&target(&sim, "desk-1"), &creds)
        .await
        .expect("a signed cancel succeeds");
    assert_eq!(done.request_id.as_ref().map(String::len), Some(32));
    assert_eq!(sim.session(PROJECT, "desk-1").unwrap().status, "CLOSE");

    let again = c
        .cancel(&target(&sim, "desk-1"), &creds)
        .await
        .expect_err("nothing left to cancel");
    assert_eq!(again.http_status(), Some(404));
    assert_eq!(
        again.code(),
        Some(workspace_assist::simulator::NO_ASSISTANCE_CODE)
    );
    assert!(again.request_id().is_some());
    assert_eq!(disposition(&again), Disposition::NotFound);
    assert_eq!(sim.count(Operation::CancelRemoteAssistance, "desk-1"), 2);
}

#[tokio::test]
async fn bad_signatures_and_unknown_keys_are_401() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AKTEST", "right");
    sim.open_session(PROJECT, "d");
    let c = client();
    for creds in [aksk("AKTEST", "wrong"), aksk("AKOTHER", "right")] {
        let e = c.cancel(&target(&sim, "d"), &creds).await.expect_err("refused");
        assert_eq!(e.http_status(), Some(401));
        assert_eq!(e.code(), Some("APIGW.0301"));
        assert_eq!(
            disposition(&e),
            Disposition::NeedsHuman(HumanReason::Unauthenticated)
        );
    }
    assert!(
        sim.session(PROJECT, "d").unwrap().in_progress(),
        "nothing was cancelled"
    );
}

#[tokio::test]
async fn temporary_credentials_need_their_security_token() {
    let sim = Simulator::start().await.unwrap();
    sim.add_temporary_access_key("AKTEMP", "sk-temp", "sec-token");
    sim.open_session(PROJECT, "d");
    let c = client();
    let without = aksk("AKTEMP", "sk-temp");
    assert_eq!(
        c.cancel(&target(&sim, "d"), &without)
            .await
            .unwrap_err()
            .http_status(),
        Some(401)
    );
    let with = Credentials::AkSk {
        access_key_id: "AKTEMP".into(),
        secret_access_key: Sensitive::new("sk-temp"),
        security_token: Some(Sensitive::new("sec-token")),
    };
    c.cancel(&target(&sim, "d"), &with)
        .await
        .expect("signed with the security token");
}

#[tokio::test]
async fn tokens_show_create_and_expiry() {
    let sim = Simulator::start().await.unwrap();
    sim.add_token("iam-token-1");
    let c = client();
    let creds = Credentials::Token(Sensitive::new("iam-token-1"));
    let t = target(&sim, "desk-9");

    let none = c.show(&t, &creds).await.unwrap();
    assert!(!none.value.in_progress(), "no session yet");
    let created = c.create(&t, &creds).await.unwrap();
    assert_eq!(created.value.initiator_type.as_deref(), Some("ADMIN_INITIATE"));
    assert_eq!(created.value.desktop_id.as_deref(), Some("desk-9"));
    let shown = c.show(&t, &creds).await.unwrap().value;
    assert!(shown.in_progress());
    assert_eq!(shown.share_space_id, created.value.share_space_id);
    let code = shown.invitation_code.clone().expect("an invitation code");
    assert_eq!(code.expose().len(), 8);
    assert!(
        !format!("{shown:?}").contains(code.expose()),
        "Debug of a ShowResponse hides the invitation code"
    );

    let twice = c.create(&t, &creds).await.unwrap_err();
    assert_eq!(twice.http_status(), Some(400));

    sim.expire_token("iam-token-1");
    let expired = c.show(&t, &creds).await.unwrap_err();
    assert_eq!(expired.code(), Some("APIGW.0307"));
    assert_eq!(disposition(&expired), Disposition::RenewToken);
}

#[tokio::test]
async fn injected_faults_are_classified() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AK", "SK");
    sim.open_session(PROJECT, "d");
    let c = client();
    let creds = aksk("AK", "SK");
    let t = target(&sim, "d");
    let op = Operation::CancelRemoteAssistance;
    sim.inject(FaultRule::new(
        "d",
        op,
        vec![
            Fault::error(500, "WKS.00000001", "internal"),
            Fault::html(502),
            Fault::error(429, "APIGW.0308", "throttled"),
            Fault::Drop,
            Fault::Delay(Duration::from_secs(3)),
            Fault::redirect(302, "https://elsewhere.example.com/"),
            Fault::error(
                400,
                "WKS.0001",
                "The request message input by the interface is empty",
            ),
            Fault::error(200, "WKS.00010109", "an error delivered with HTTP 200"),
            Fault::foreign_json_404(),
            Fault::html(404),
            Fault::error(404, "APIGW.0404", "a gateway's not found"),
            Fault::DropAfterApplying,
            Fault::Error {
                status: 403,
                code: "WKS.00010003".into(),
                message: "no permission".into(),
                detail: Some("detail".into()),
                encoded_authorization_message: Some("ENCODED".into()),
            },
        ],
    ));
    let expect = [
        Disposition::Retry(RetryReason::ServerError),
        Disposition::Retry(RetryReason::ServerError),
        Disposition::Retry(RetryReason::Throttled),
        Disposition::Retry(RetryReason::Transport),
        Disposition::Retry(RetryReason::Transport),
        Disposition::NeedsHuman(HumanReason::WrongEndpoint),
        Disposition::NeedsHuman(HumanReason::Rejected),
        Disposition::NeedsHuman(HumanReason::Rejected),
        Disposition::Retry(RetryReason::Transport),
        Disposition::Retry(RetryReason::Transport),
        Disposition::Retry(RetryReason::Transport),
        Disposition::Retry(RetryReason::Transport),
        Disposition::NeedsHuman(HumanReason::Forbidden),
    ];
    for (i, want) in expect.iter().enumerate() {
        let e = c.cancel(&t, &creds).await.expect_err("a fault");
        assert_eq!(disposition(&e), *want, "fault {i}: {e:?}");
        if i == 4 {
            assert!(
                matches!(
                    e,
                    CloudError::Transport {
                        kind: TransportKind::Timeout,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        if let CloudError::Api(api) = &e
            && i == 12
        {
            assert_eq!(api.body.detail.as_deref(), Some("detail"));
            assert_eq!(api.body.encoded_authorization_message.as_deref(), Some("ENCODED"));
        }
    }
    // The reply of the cancel before last was lost after the cloud applied it: the session is
    // closed, and the next cancel meets "nothing to cancel" (a 404 Workspace error).
    assert!(
        !sim.session(PROJECT, "d").unwrap().in_progress(),
        "the lost reply's cancel was applied"
    );
    let after = c.cancel(&t, &creds).await.expect_err("nothing left to cancel");
    assert_eq!(
        (after.http_status(), disposition(&after)),
        (Some(404), Disposition::NotFound)
    );
}

#[tokio::test]
async fn a_success_status_with_an_error_body_is_an_error() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AK", "SK");
    let c = client();
    let creds = aksk("AK", "SK");
    let t = target(&sim, "d");
    let show = Operation::ShowDesktopRemoteAssistanceInfo;
    // Each error shape of the contract's parsing order, delivered with HTTP 200.
    let raw = |body: &str| Fault::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: body.as_bytes().to_vec(),
        headers: vec![],
    };
    sim.inject(FaultRule::new(
        "d",
        show,
        vec![
            raw(r#"{"error_code":"WKS.00010306","error_msg":"busy"}"#),
            raw(r#"{"code":"WKS.00010110","message":"failed"}"#),
            raw(r#"{"error":{"code":"APIG.1000","message":"nested"}}"#),
        ],
    ));
    for expected in ["WKS.00010306", "WKS.00010110", "APIG.1000"] {
        let e = c
            .show(&t, &creds)
            .await
            .expect_err("an error shape is never a \"no session\"");
        assert_eq!((e.http_status(), e.code()), (Some(200), Some(expected)));
        assert_ne!(disposition(&e), Disposition::NotFound);
    }
    assert!(
        !c.show(&t, &creds).await.unwrap().value.in_progress(),
        "a plain {{}} is \"no session\""
    );
}

#[tokio::test]
async fn a_missing_desktop_is_a_workspace_404() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AK", "SK");
    sim.remove_desktop(PROJECT, "gone");
    let c = client();
    let creds = aksk("AK", "SK");
    let t = target(&sim, "gone");
    let shown = c.show(&t, &creds).await.expect_err("no such desktop");
    let created = c.create(&t, &creds).await.expect_err("no such desktop");
    for e in [shown, created] {
        assert_eq!(
            (e.http_status(), disposition(&e)),
            (Some(404), Disposition::NotFound),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn unreadable_success_bodies_are_retried() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AK", "SK");
    let c = client();
    let creds = aksk("AK", "SK");
    let t = target(&sim, "d");
    let op = Operation::ShowDesktopRemoteAssistanceInfo;
    let raw = |body: Vec<u8>| Fault::Raw {
        status: 200,
        content_type: "application/json".into(),
        body,
        headers: vec![],
    };
    sim.inject(FaultRule::new(
        "d",
        op,
        vec![raw(b"{\"share_space_id\":".to_vec()), raw(vec![b' '; 3 << 20])],
    ));
    let truncated = c.show(&t, &creds).await.unwrap_err();
    assert!(
        matches!(
            truncated,
            CloudError::Transport {
                kind: TransportKind::Body,
                ..
            }
        ),
        "{truncated:?}"
    );
    assert_eq!(
        disposition(&truncated),
        Disposition::Retry(RetryReason::Transport)
    );
    let huge_blank = c
        .show(&t, &creds)
        .await
        .expect_err("a blank body is not the API's answer");
    assert_eq!(
        disposition(&huge_blank),
        Disposition::Retry(RetryReason::Transport)
    );
}

#[tokio::test]
async fn closed_port_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let t = Target {
        endpoint: resolve_endpoint(None, Some(&format!("http://127.0.0.1:{port}"))).unwrap(),
        project_id: PROJECT.into(),
        desktop_id: "d".into(),
    };
    let e = client().cancel(&t, &aksk("AK", "SK")).await.unwrap_err();
    assert!(
        matches!(
            e,
            CloudError::Transport {
                kind: TransportKind::Connect,
                ..
            }
        ),
        "{e:?}"
    );
}

/// Accepts connections and forwards each to `target` (None: holds it open, answering nothing),
/// counting them.
async fn counting_forwarder(
    target: Option<std::net::SocketAddr>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                match target {
                    Some(t) => {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(t).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }
                    None => tokio::time::sleep(Duration::from_secs(5)).await,
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn the_environments_proxy_is_never_used_only_the_configured_one() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AKTEST", "sk-test-secret");
    sim.open_session(PROJECT, "desk-proxy");
    let creds = aksk("AKTEST", "sk-test-secret");
    let (env_proxy, env_seen) = counting_forwarder(None).await;
    // SAFETY: no other thread of this test binary reads or writes these variables while it runs
    // (the client reads them when it is built, below).
    unsafe {
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            std::env::set_var(name, format!("http://{env_proxy}"));
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let direct = client();
    assert!(
        direct
            .show(&target(&sim, "desk-proxy"), &creds)
            .await
            .unwrap()
            .value
            .in_progress()
    );
    assert_eq!(
        env_seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the environment's proxy saw no call (and so no token)"
    );

    let (flagged, flagged_seen) = counting_forwarder(Some(sim.addr())).await;
    let options = ClientOptions {
        timeout: Duration::from_secs(2),
        proxy: Some(format!("http://{flagged}").parse().unwrap()),
        ..ClientOptions::default()
    };
    let through = WorkspaceClient::new(&options).unwrap();
    assert!(
        through
            .show(&target(&sim, "desk-proxy"), &creds)
            .await
            .unwrap()
            .value
            .in_progress(),
        "signed calls work through the configured proxy"
    );
    assert_eq!(flagged_seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    unsafe {
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            std::env::remove_var(name);
        }
    }
}

#[tokio::test]
async fn dot_segment_ids_are_never_sent() {
    // A URL collapses "." and "..": the request would reach another path than the one signed.
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key("AKTEST", "sk-test-secret");
    let creds = aksk("AKTEST", "sk-test-secret");
    for id in [".", ".."] {
        let t = target(&sim, id);
        let refused = client().cancel(&t, &creds).await.expect_err("refused");
        assert!(
            matches!(refused, CloudError::Request { .. }),
            "{id:?}: {refused:?}"
        );
        assert_eq!(
            disposition(&refused),
            Disposition::NeedsHuman(HumanReason::InvalidRequest)
        );
    }
    assert!(sim.requests().is_empty(), "nothing was sent");
}
