//! TLS to the cloud is verified, and can only be relaxed on purpose: an endpoint with a
//! certificate nobody vouches for is refused; trusting its CA (`--ca-bundle`) works; and
//! `--insecure-skip-tls-verify` works too but is logged loudly at start.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::operator::{AK, PROJECT, SK, World};
use support::process::OperatorProcess;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};
use workspace_assist::resource::Phase;
use workspace_assist::simulator::Simulator;
use workspace_assist::workspace::{
    ClientOptions, Credentials, Sensitive, Target, WorkspaceClient, resolve_endpoint,
};

/// A TLS front for the simulator with a freshly made self-signed certificate: (endpoint, CA PEM).
async fn tls_front(sim: &Simulator) -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = sim.addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), cert_pem)
}

fn creds() -> Credentials {
    Credentials::AkSk {
        access_key_id: AK.into(),
        secret_access_key: Sensitive::new(SK),
        security_token: None,
    }
}

#[tokio::test]
async fn the_client_verifies_certificates_unless_told_otherwise() {
    let sim = Simulator::start().await.unwrap();
    sim.add_access_key(AK, SK);
    let (endpoint, ca) = tls_front(&sim).await;
    let target = Target {
        endpoint: resolve_endpoint(None, Some(&endpoint)).unwrap(),
        project_id: PROJECT.into(),
        desktop_id: "desk-tls".into(),
    };
    sim.open_session(PROJECT, "desk-tls");

    let default = WorkspaceClient::new(&ClientOptions::default()).unwrap();
    let refused = default
        .show(&target, &creds())
        .await
        .expect_err("an unknown certificate is refused");
    let text = format!("{refused} {refused:?}").to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "the error says why: {refused}"
    );
    assert!(
        sim.requests().is_empty(),
        "nothing reached the cloud over the unverified connection"
    );

    let trusting = WorkspaceClient::new(&ClientOptions {
        extra_ca_pem: Some(ca.into_bytes()),
        ..ClientOptions::default()
    })
    .unwrap();
    assert!(
        trusting
            .show(&target, &creds())
            .await
            .unwrap()
            .value
            .in_progress(),
        "a CA bundle that vouches for it works"
    );

    let insecure = WorkspaceClient::new(&ClientOptions {
        insecure_skip_tls_verify: true,
        ..ClientOptions::default()
    })
    .unwrap();
    assert!(
        insecure.show(&target, &creds()).await.is_ok(),
        "the explicit insecure setting accepts it"
    );
}

#[tokio::test]
async fn the_operator_refuses_unverified_endpoints_and_logs_the_insecure_flag_loudly() {
    let w = World::new("tls").await;
    let (endpoint, _) = tls_front(&w.sim).await;
    let kubeconfig = support::control_plane::shared().kubeconfig.clone();
    let ns = w.namespace.clone();
    let args = [
        "--namespace",
        ns.as_str(),
        "--leader-elect",
        "false",
        "--poll-interval",
        "1h",
        "--allowed-endpoint",
        endpoint.as_str(),
    ];
    let manifest = |name: &str| {
        let mut m = w.manifest(name, name);
        m["spec"]["endpoint"] = serde_json::json!(endpoint);
        m
    };

    let verifying = OperatorProcess::spawn(&kubeconfig, &args);
    w.create(manifest("verified")).await;
    let ra = w
        .wait_for("verified", Duration::from_secs(30), "a failure recorded", |ra| {
            ra.status.as_ref().is_some_and(|s| s.last_error.is_some())
        })
        .await;
    let message = ra
        .status
        .unwrap()
        .last_error
        .unwrap()
        .error_message
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("tls"),
        "status says why: {message}"
    );
    assert!(w.sim.requests().is_empty(), "nothing reached the cloud");
    assert!(!verifying.logs().contains("NOT verified"));
    drop(verifying);

    let mut insecure_args = args.to_vec();
    insecure_args.push("--insecure-skip-tls-verify");
    let insecure = OperatorProcess::spawn(&kubeconfig, &insecure_args);
    w.create(manifest("insecure")).await;
    w.wait_for("insecure", Duration::from_secs(30), "Active", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await;
    let logs = insecure.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("NOT verified"))
        .expect("the insecure flag is logged at start");
    assert!(warning.contains("WARN"), "logged as a warning: {warning}");
}
