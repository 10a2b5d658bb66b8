//! Trust boundaries a namespace cannot cross: a RemoteAssistance (or a Secret's iamEndpoint)
//! that points the operator at a server of its choosing gets nothing. The operator allows only
//! Huawei Cloud's official endpoints and those its admin allowed; the rest is Stalled with reason
//! EndpointNotAllowed, and no connection is ever made.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::operator::{World, condition_reason};

const T: Duration = Duration::from_secs(30);

/// A server that counts the connections it is offered (and answers none).
async fn listening_attacker() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (endpoint, connections)
}

#[tokio::test]
async fn credentials_never_go_to_an_endpoint_the_operator_does_not_allow() {
    let mut w = World::new("bounds").await;
    let (attacker, connections) = listening_attacker().await;
    w.put_secret("token-credentials", &[("token", "MIIboundary-test-token")])
        .await;
    w.put_secret(
        "password-login",
        &[
            ("username", "helpdesk"),
            ("password", "boundary-password"),
            ("domainName", "acme"),
            ("iamEndpoint", &attacker),
        ],
    )
    .await;
    w.start_operator(w.config());

    // The spec's endpoint, with a token Secret and with the AK/SK Secret; the Secret's
    // iamEndpoint with a password login (the endpoint itself is the allowed simulator).
    let mut token = w.manifest("token", "desk-1");
    token["spec"]["endpoint"] = json!(attacker);
    token["spec"]["credentialsSecretRef"]["name"] = json!("token-credentials");
    let mut signed = w.manifest("signed", "desk-2");
    signed["spec"]["endpoint"] = json!(attacker);
    let mut login = w.manifest("login", "desk-3");
    login["spec"]["credentialsSecretRef"]["name"] = json!("password-login");
    for m in [token, signed, login] {
        w.create(m).await;
    }
    for name in ["token", "signed", "login"] {
        let ra = w
            .wait_for(name, T, "Stalled EndpointNotAllowed", |ra| {
                condition_reason(ra, "Stalled").as_deref() == Some("EndpointNotAllowed")
            })
            .await;
        let message = &ra
            .status
            .as_ref()
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .error_message;
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("--allowed-endpoint")),
            "{name}: the message says how to allow it: {message:?}"
        );
    }
    // Deleting them is held too (a cancel would send the credentials there as well): once the
    // operator has acted on the deletion (its cancel attempt is recorded, which only a cleanup
    // writes), the finalizer is still on and nothing reached the attacker.
    w.delete("token").await;
    let ra = w
        .wait_for("token", T, "the deletion acted on", |ra| {
            ra.metadata.deletion_timestamp.is_some()
                && ra
                    .status
                    .as_ref()
                    .and_then(|s| s.last_error.as_ref())
                    .is_some_and(|e| e.operation == "CancelRemoteAssistance")
        })
        .await;
    assert_eq!(
        condition_reason(&ra, "Stalled").as_deref(),
        Some("EndpointNotAllowed")
    );
    assert!(support::operator::has_finalizer(&ra), "the finalizer stays");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the attacker's server was never contacted"
    );
    assert!(
        w.sim.requests().is_empty() && w.sim.token_refusals() == 0,
        "nothing was sent anywhere"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn the_default_credentials_serve_only_namespaces_the_admin_allowed() {
    let mut w = World::new("bounds").await;
    let mut config = w.config();
    config.default_credentials = Some((w.namespace.clone(), support::operator::SECRET.to_string()));
    config.default_credentials_namespaces = Some(
        workspace_assist::controller::LabelSelector::parse(
            "workspace.assist.dev/default-credentials=allowed",
        )
        .unwrap(),
    );
    w.start_operator(config);
    let mut m = w.manifest("ra", "desk-default");
    m["spec"].as_object_mut().unwrap().remove("credentialsSecretRef");
    w.create(m).await;
    w.wait_for("ra", T, "Stalled DefaultCredentialsNotAllowed", |ra| {
        condition_reason(ra, "Stalled").as_deref() == Some("DefaultCredentialsNotAllowed")
    })
    .await;
    assert!(
        w.sim.requests().is_empty(),
        "no call with the operator's credentials"
    );

    // The admin allows the namespace: a retry (or the next recheck) goes ahead.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(w.client.clone());
    let label =
        json!({ "metadata": { "labels": { "workspace.assist.dev/default-credentials": "allowed" } } });
    namespaces
        .patch(&w.namespace, &Default::default(), &kube::api::Patch::Merge(label))
        .await
        .unwrap();
    w.annotate("ra", json!({ "workspace.assist.dev/retry": "1" }))
        .await;
    w.wait_for("ra", T, "Active", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(workspace_assist::resource::Phase::Active)
    })
    .await;
    w.stop_operator().await;
}
