//! Hostile and bad input: the apiserver refuses malformed specs (a table of cases, through the
//! CRD's schema and CEL rules), and bad credentials or endpoints give a clear condition and Event
//! without a crash or a hot loop.

use crate::support;

use kube::ResourceExt;

use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use support::operator::{World, condition, condition_reason};
use workspace_assist::resource::RemoteAssistance;
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(20);

fn untyped(w: &World) -> Api<DynamicObject> {
    Api::namespaced_with(
        w.client.clone(),
        &w.namespace,
        &ApiResource::erase::<RemoteAssistance>(&()),
    )
}

/// Applies `edit` to a valid manifest; `None` removes the field.
fn with(w: &World, name: &str, edit: &[(&str, Option<Value>)]) -> DynamicObject {
    let mut m = w.manifest(name, "desk");
    for (path, value) in edit {
        let (parent, key) = path.rsplit_once('.').map_or(("spec", *path), |(p, k)| (p, k));
        let mut target = &mut m;
        for part in parent.split('.') {
            target = target.get_mut(part).expect("a path in the manifest");
        }
        match value {
            Some(v) => target[key] = v.clone(),
            None => {
                target.as_object_mut().unwrap().remove(key);
            }
        }
    }
    serde_json::from_value(m).unwrap()
}

#[tokio::test]
async fn malformed_specs_are_rejected() {
    let w = World::new("hostile").await;
    let long = "x".repeat(256);
    /// A case's name and the spec fields it sets (None: removes).
    type Case<'a> = (&'a str, Vec<(&'a str, Option<Value>)>);
    let cases: Vec<Case> = vec![
        ("empty desktopId", vec![("desktopId", Some(json!("")))]),
        ("256-char desktopId", vec![("desktopId", Some(json!(long)))]),
        ("missing desktopId", vec![("desktopId", None)]),
        ("desktopId a number", vec![("desktopId", Some(json!(42)))]),
        ("empty projectId", vec![("projectId", Some(json!("")))]),
        ("256-char projectId", vec![("projectId", Some(json!(long)))]),
        ("missing projectId", vec![("projectId", None)]),
        ("neither region nor endpoint", vec![("endpoint", None)]),
        (
            "region with spaces",
            vec![("endpoint", None), ("region", Some(json!("cn north 4")))],
        ),
        (
            "region upper case",
            vec![("endpoint", None), ("region", Some(json!("CN-NORTH-4")))],
        ),
        (
            "region without number",
            vec![("endpoint", None), ("region", Some(json!("cn-north")))],
        ),
        (
            "region too long",
            vec![
                ("endpoint", None),
                ("region", Some(json!(format!("cn-{}-4", "a".repeat(70))))),
            ],
        ),
        ("endpoint not a URL", vec![("endpoint", Some(json!("not a url")))]),
        (
            "endpoint ftp",
            vec![("endpoint", Some(json!("ftp://example.com")))],
        ),
        (
            "endpoint without host",
            vec![("endpoint", Some(json!("https://")))],
        ),
        ("endpoint empty", vec![("endpoint", Some(json!("")))]),
        (
            "endpoint too long",
            vec![(
                "endpoint",
                Some(json!(format!("https://{}.com", "a".repeat(2100)))),
            )],
        ),
        (
            "unknown deletion policy",
            vec![("deletionPolicy", Some(json!("Delete")))],
        ),
        (
            "deletion policy lower case",
            vec![("deletionPolicy", Some(json!("orphan")))],
        ),
        ("cancelled a string", vec![("cancelled", Some(json!("yes")))]),
        ("initiate a string", vec![("initiate", Some(json!("no")))]),
        (
            "secret in another namespace",
            vec![("credentialsSecretRef", Some(json!({ "name": "other-ns/creds" })))],
        ),
        (
            "secret name with upper case",
            vec![("credentialsSecretRef", Some(json!({ "name": "Creds" })))],
        ),
        (
            "secret ref without name",
            vec![("credentialsSecretRef", Some(json!({})))],
        ),
        ("no spec", vec![("metadata.annotations", None)]),
    ];
    let api = untyped(&w);
    for (i, (what, edit)) in cases.into_iter().enumerate() {
        let mut obj = with(&w, &format!("bad-{i}"), &edit);
        if what == "no spec" {
            obj.data.as_object_mut().unwrap().remove("spec");
        }
        let err = api.create(&PostParams::default(), &obj).await.expect_err(what);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{what}: {err:?}"
        );
    }

    // A Secret of another namespace cannot be named: a `namespace` in the reference is refused
    // under strict field validation (kubectl's default), and dropped by the schema otherwise, so
    // the operator only ever reads the resource's own namespace.
    let other_ns = with(
        &w,
        "other-ns",
        &[(
            "credentialsSecretRef",
            Some(json!({ "name": "creds", "namespace": "kube-system" })),
        )],
    );
    let strict = kube::api::PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..kube::api::PatchParams::apply("tests")
    };
    let err = api
        .patch("other-ns", &strict, &kube::api::Patch::Apply(&other_ns))
        .await
        .expect_err("a namespace in the Secret reference");
    assert!(
        err.to_string().contains("not declared in schema") || err.to_string().contains("unknown field"),
        "{err}"
    );
    let stored = api.create(&PostParams::default(), &other_ns).await.unwrap();
    assert_eq!(
        stored.data["spec"]["credentialsSecretRef"],
        json!({ "name": "creds" }),
        "the namespace is not kept"
    );
    api.delete("other-ns", &Default::default()).await.unwrap();

    // Transition rules on an existing object.
    w.create(w.manifest("good", "desk")).await;
    for (what, spec) in [
        ("desktopId changed", json!({ "desktopId": "other" })),
        ("projectId changed", json!({ "projectId": "other" })),
    ] {
        let err = w.patch_spec("good", spec).await.expect_err(what);
        assert!(err.to_string().contains("immutable"), "{what}: {err}");
    }
    w.patch_spec("good", json!({ "cancelled": true })).await.unwrap();
    let err = w
        .patch_spec("good", json!({ "cancelled": false }))
        .await
        .expect_err("flipping back");
    assert!(err.to_string().contains("cannot be set back"), "{err}");
}

/// The readable part of a secret key that is not UTF-8.
const BINARY_SECRET_TAIL: &str = "binary-SECRET-tail-7Hq2";

#[tokio::test]
async fn bad_credentials_and_endpoints_stall_with_a_clear_reason_and_no_hot_loop() {
    let mut w = World::new("hostile").await;
    w.put_secret("half", &[("accessKeyId", "AK")]).await;
    w.put_secret("empty", &[("accessKeyId", ""), ("secretAccessKey", "")])
        .await;
    w.put_secret("nothing", &[("unrelated", "x")]).await;
    // A Secret of the wrong type, and one whose key is not UTF-8.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.client.clone(), &w.namespace);
    let tls: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "tls" }, "type": "kubernetes.io/tls",
        "data": { "tls.crt": "", "tls.key": "" }
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &tls).await.unwrap();
    // Not UTF-8, with a readable tail that must never be shown (decoded, as a leak would show it).
    let binary = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("binary".into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                ("accessKeyId", b"AKBINARY".to_vec()),
                (
                    "secretAccessKey",
                    [&[0xff, 0xfe][..], BINARY_SECRET_TAIL.as_bytes()].concat(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v)))
            .collect(),
        ),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &binary).await.unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    w.sim.inject(FaultRule::new(
        "redirected",
        Operation::ShowDesktopRemoteAssistanceInfo,
        vec![Fault::redirect(301, "https://elsewhere.example.com/"); 50],
    ));

    let mut config = w.config();
    config.backoff.needs_human_recheck = Duration::from_secs(600);
    let closed =
        workspace_assist::controller::EndpointRule::parse(&format!("http://127.0.0.1:{closed_port}"))
            .unwrap();
    config.endpoints.extra.push(closed);
    let backoff = config.backoff;
    let telemetry = workspace_assist::controller::Telemetry::default();
    w.start_operator_with(config, telemetry.clone());
    let started = std::time::Instant::now();
    let unreachable_attempts = || -> usize {
        let line = telemetry
            .metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("workspace_assist_reconciles_total{")
                    && l.contains("result=\"error\"")
                    && l.contains("reason=\"CloudUnreachable\"")
            })
            .map(str::to_string);
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "missing",
            json!({ "credentialsSecretRef": { "name": "does-not-exist" } }),
            "CredentialsSecretNotFound",
        ),
        (
            "half",
            json!({ "credentialsSecretRef": { "name": "half" } }),
            "CredentialsInvalid",
        ),
        (
            "empty",
            json!({ "credentialsSecretRef": { "name": "empty" } }),
            "CredentialsInvalid",
        ),
        (
            "nothing",
            json!({ "credentialsSecretRef": { "name": "nothing" } }),
            "CredentialsInvalid",
        ),
        (
            "tls",
            json!({ "credentialsSecretRef": { "name": "tls" } }),
            "CredentialsInvalid",
        ),
        (
            "binary",
            json!({ "credentialsSecretRef": { "name": "binary" } }),
            "CredentialsInvalid",
        ),
        (
            "closed-port",
            json!({ "endpoint": format!("http://127.0.0.1:{closed_port}") }),
            "CloudUnreachable",
        ),
        ("redirected", json!({}), "WrongEndpoint"),
    ];
    for (name, spec, _) in &cases {
        let mut m = w.manifest(name, name);
        for (k, v) in spec.as_object().unwrap() {
            m["spec"][k] = v.clone();
        }
        w.create(m).await;
    }
    for (name, _, reason) in &cases {
        let ra = w
            .wait_for(name, T, &format!("failing with {reason}"), |ra| {
                condition_reason(ra, "Ready").as_deref() == Some(*reason)
            })
            .await;
        let status = ra.status.as_ref().unwrap();
        assert!(
            status
                .last_error
                .as_ref()
                .is_some_and(|e| e.error_message.as_deref().is_some_and(|m| !m.is_empty())),
            "{name}: a message says what is wrong"
        );
        if *reason == "CloudUnreachable" {
            assert_eq!(
                condition(&ra, "Reconciling").as_deref(),
                Some("True"),
                "{name}: retried with backoff"
            );
        } else {
            assert_eq!(
                condition(&ra, "Stalled").as_deref(),
                Some("True"),
                "{name}: needs a person"
            );
        }
    }
    // A Secret that holds no usable credentials is never pinned: naming a TLS Secret (or any
    // other) must not let a resource block its deletion.
    for name in ["half", "empty", "nothing", "tls", "binary"] {
        let secret = w.secret(name).await.unwrap();
        assert!(
            !secret
                .finalizers()
                .iter()
                .any(|f| f == workspace_assist::resource::SECRET_FINALIZER),
            "Secret {name} was pinned"
        );
    }
    // No hot loop: the person-needing failures are not retried within the recheck interval, and
    // the unreachable endpoint backs off.
    let before = w
        .sim
        .count(Operation::ShowDesktopRemoteAssistanceInfo, "redirected");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.sim
            .count(Operation::ShowDesktopRemoteAssistanceInfo, "redirected"),
        before,
        "a redirect is not retried at once"
    );
    // The unreachable endpoint is retried, never sooner than the backoff allows.
    let (attempts, bound) = (
        unreachable_attempts(),
        support::operator::attempts_within(&backoff, started.elapsed()),
    );
    println!(
        "unreachable endpoint: {attempts} attempts in {:?} (the backoff allows at most {bound})",
        started.elapsed()
    );
    assert!(
        attempts >= 2 && attempts <= bound,
        "{attempts} attempts, at most {bound} allowed"
    );
    for (name, _, reason) in &cases {
        support::operator::eventually(T, &format!("a {reason} Event for {name}"), || async {
            w.event_reasons(name, Some("Warning"))
                .await
                .iter()
                .any(|r| r == reason)
        })
        .await;
        let ra = w.api().get(name).await.unwrap();
        let message = ra
            .status
            .as_ref()
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .error_message
            .clone()
            .unwrap();
        assert!(
            !message.contains(BINARY_SECRET_TAIL),
            "{name}: a secret value in the message"
        );
        let notes = w.event_notes(name).await;
        assert!(
            notes.iter().all(|n| !n.contains(BINARY_SECRET_TAIL)),
            "{name}: a secret value in an Event"
        );
    }
    w.stop_operator().await;
}
