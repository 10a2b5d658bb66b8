//! The operator core on the real control plane and the Workspace simulator: the finalizer, the
//! cancel on delete and on spec.cancelled, status and the cloud's error codes, backoff, and
//! credentials that get fixed.

use crate::support;

use std::time::Duration;

use kube::api::Api;
use serde_json::json;
use support::operator::CANCEL;
use support::operator::{PROJECT, SECRET, SK, World, condition, condition_reason, eventually, has_finalizer};
use workspace_assist::resource::Phase;
use workspace_assist::simulator::{Fault, FaultRule};

const T: Duration = Duration::from_secs(20);

fn phase(ra: &workspace_assist::resource::RemoteAssistance) -> Option<Phase> {
    ra.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn create_then_delete_cancels_exactly_once() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-a");
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-a")).await;

    let ra = w
        .wait_for("ra", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    assert!(has_finalizer(&ra), "finalizer added");
    assert_eq!(condition(&ra, "Ready").as_deref(), Some("True"));
    assert_eq!(condition(&ra, "Synced").as_deref(), Some("True"));
    assert_eq!(
        condition(&ra, "Stalled"),
        None,
        "abnormal-true conditions only while True"
    );
    assert_eq!(condition(&ra, "Reconciling"), None);
    assert_eq!(
        ra.status.as_ref().unwrap().observed_generation,
        ra.metadata.generation
    );
    assert_eq!(w.sim.count(CANCEL, "desk-a"), 0);

    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-a"), 1, "exactly one DELETE");
    assert!(
        !w.sim.session(PROJECT, "desk-a").unwrap().in_progress(),
        "the cloud session is closed"
    );
    eventually(T, "a Cancelled Event", || async {
        w.event_reasons("ra", None)
            .await
            .contains(&"Cancelled".to_string())
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn spec_cancelled_cancels_keeps_the_object_and_delete_makes_no_second_call() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-b");
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-b")).await;
    w.wait_for("ra", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;

    w.patch_spec("ra", json!({ "cancelled": true })).await.unwrap();
    let ra = w
        .wait_for("ra", T, "Cancelled", |ra| phase(ra) == Some(Phase::Cancelled))
        .await;
    assert_eq!(condition(&ra, "Ready").as_deref(), Some("True"));
    assert_eq!(condition_reason(&ra, "Ready").as_deref(), Some("Cancelled"));
    let status = ra.status.as_ref().unwrap();
    assert!(status.cancelled_at.is_some());
    assert_eq!(status.cancel_attempts, 1);
    assert!(has_finalizer(&ra), "the object is kept");
    assert_eq!(w.sim.count(CANCEL, "desk-b"), 1);

    let err = w
        .patch_spec("ra", json!({ "cancelled": false }))
        .await
        .expect_err("cancelled cannot go back");
    assert!(
        err.to_string().contains("cancelled cannot be set back to false"),
        "{err}"
    );

    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-b"), 1, "no second cloud call on delete");
    w.stop_operator().await;
}

#[tokio::test]
async fn a_workspace_404_releases_the_object() {
    let mut w = World::new("core").await;
    // The desktop has no session: the cloud answers the cancel with a 404 Workspace error.
    w.start_operator(w.config());
    let mut m = w.manifest("a", "desk-404");
    m["spec"]["initiate"] = json!(false);
    w.create(m).await;
    w.wait_for("a", T, "finalized", has_finalizer).await;
    w.delete("a").await;
    w.wait_gone("a", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-404"), 1);
    eventually(T, "a NothingToCancel Event", || async {
        w.event_reasons("a", None)
            .await
            .contains(&"NothingToCancel".to_string())
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn server_errors_are_retried_and_counted() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-5xx");
    w.sim.inject(FaultRule::new(
        "desk-5xx",
        CANCEL,
        vec![Fault::error(500, "WKS.00000001", "internal error"); 3],
    ));
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-5xx")).await;
    w.wait_for("ra", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    w.delete("ra").await;

    let during = w
        .wait_for("ra", T, "retrying with the 500 recorded", |ra| {
            ra.status.as_ref().is_some_and(|s| {
                s.cancel_attempts >= 2 && s.last_error.as_ref().is_some_and(|e| e.http_status == Some(500))
            })
        })
        .await;
    let status = during.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Cancelling));
    assert_eq!(
        status.last_error.as_ref().unwrap().error_code.as_deref(),
        Some("WKS.00000001")
    );
    assert_eq!(condition(&during, "Reconciling").as_deref(), Some("True"));
    assert_eq!(condition(&during, "Stalled"), None);

    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-5xx"), 4, "three failures, then the 204");
    w.stop_operator().await;
}

#[tokio::test]
async fn throttling_backs_off_exponentially() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-429");
    w.sim.inject(FaultRule::new(
        "desk-429",
        CANCEL,
        vec![Fault::error(429, "APIGW.0308", "Too many requests"); 4],
    ));
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-429")).await;
    w.wait_for("ra", T, "finalized", has_finalizer).await;
    w.delete("ra").await;
    w.wait_gone("ra", T).await;

    let times: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.operation == Some(CANCEL))
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 5);
    let gaps: Vec<Duration> = times.windows(2).map(|p| p[1] - p[0]).collect();
    // Base 200ms with equal jitter: the n-th wait is between 100ms*2^(n-1) and 200ms*2^(n-1).
    for (i, gap) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(100 << i);
        assert!(*gap >= floor, "wait {i} was {gap:?}, below {floor:?}: {gaps:?}");
    }
    assert!(gaps[3] > gaps[0], "waits grow: {gaps:?}");
    w.stop_operator().await;
}

#[tokio::test]
async fn forbidden_stalls_with_every_error_field_and_keeps_the_object() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-403");
    w.sim.inject(FaultRule::new(
        "desk-403",
        CANCEL,
        vec![Fault::Error {
            status: 403,
            code: "WKS.00010003".into(),
            message: "The user does not have the permission.".into(),
            detail: Some("workspace:desktops:cancelRemoteAssistance denied".into()),
            encoded_authorization_message: Some("ENCODEDMSG123".into()),
        }],
    ));
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-403")).await;
    w.wait_for("ra", T, "Active", |ra| phase(ra) == Some(Phase::Active))
        .await;
    w.delete("ra").await;

    let ra = w
        .wait_for("ra", T, "Stalled", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await;
    let status = ra.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(condition(&ra, "Ready").as_deref(), Some("False"));
    assert_eq!(condition(&ra, "Reconciling"), None);
    assert_eq!(condition_reason(&ra, "Stalled").as_deref(), Some("Forbidden"));
    let e = status.last_error.as_ref().expect("lastError");
    assert_eq!(e.operation, "CancelRemoteAssistance");
    assert_eq!(e.http_status, Some(403));
    assert_eq!(e.error_code.as_deref(), Some("WKS.00010003"));
    assert_eq!(
        e.error_message.as_deref(),
        Some("The user does not have the permission.")
    );
    assert_eq!(
        e.error_detail.as_deref(),
        Some("workspace:desktops:cancelRemoteAssistance denied")
    );
    assert_eq!(e.encoded_authorization_message.as_deref(), Some("ENCODEDMSG123"));
    assert_eq!(e.request_id.as_ref().map(String::len), Some(32));
    assert!(e.time.is_some());
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert!(
        !stalled.message.contains(e.request_id.as_deref().unwrap()),
        "no request ID in condition messages"
    );

    // Slow recheck (10 min in these tests): the object stays, with no further calls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(has_finalizer(&w.api().get("ra").await.unwrap()));
    assert_eq!(
        w.sim.count(CANCEL, "desk-403"),
        1,
        "a needs-a-human error is not hammered"
    );
    eventually(T, "a Forbidden Event", || async {
        w.event_reasons("ra", None)
            .await
            .contains(&"Forbidden".to_string())
    })
    .await;

    // The retry annotation re-drives it at once (the fault is used up: it succeeds).
    w.api()
        .patch(
            "ra",
            &Default::default(),
            &kube::api::Patch::Merge(
                json!({ "metadata": { "annotations": { "workspace.assist.dev/retry": "1" } } }),
            ),
        )
        .await
        .unwrap();
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-403"), 2);
    w.stop_operator().await;
}

#[tokio::test]
async fn fixing_the_secret_retries_at_once() {
    let mut w = World::new("core").await;
    w.sim.open_session(PROJECT, "desk-key");
    w.put_secret(
        SECRET,
        &[
            ("accessKeyId", support::operator::AK),
            ("secretAccessKey", "wrong-secret-key"),
        ],
    )
    .await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-key")).await;
    let ra = w
        .wait_for("ra", T, "Stalled", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .error_code
            .as_deref(),
        Some("APIGW.0301")
    );
    assert_eq!(
        condition_reason(&ra, "Stalled").as_deref(),
        Some("Unauthenticated")
    );
    w.delete("ra").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_calls = w.sim.requests().iter().filter(|r| !r.authenticated).count();
    assert!(failed_calls <= 2, "401s are not hammered: {failed_calls}");

    w.put_secret(
        SECRET,
        &[("accessKeyId", support::operator::AK), ("secretAccessKey", SK)],
    )
    .await;
    w.wait_gone("ra", Duration::from_secs(10)).await; // the recheck interval is 10 minutes
    assert!(!w.sim.session(PROJECT, "desk-key").unwrap().in_progress());
    w.stop_operator().await;
}

#[tokio::test]
async fn orphan_needs_no_cloud_call_and_no_secret() {
    let mut w = World::new("core").await;
    w.start_operator(w.config());
    let mut m = w.manifest("ra", "desk-orphan");
    m["spec"]["deletionPolicy"] = json!("Orphan");
    m["spec"]["credentialsSecretRef"]["name"] = json!("no-such-secret");
    w.create(m).await;
    let ra = w
        .wait_for("ra", T, "finalized and failed on the missing Secret", |ra| {
            has_finalizer(ra)
                && condition_reason(ra, "Stalled").as_deref() == Some("CredentialsSecretNotFound")
        })
        .await;
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .error_code
            .as_deref(),
        Some("CredentialsSecretNotFound")
    );
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert!(w.sim.requests().is_empty(), "no cloud call at all");
    w.stop_operator().await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_apiserver() {
    let w = World::new("core").await;
    let long = "x".repeat(256);
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("empty desktopId", json!({ "desktopId": "" })),
        ("256-char desktopId", json!({ "desktopId": long })),
        ("256-char projectId", json!({ "projectId": long })),
        ("no region or endpoint", json!({ "endpoint": null })),
        ("endpoint not a URL", json!({ "endpoint": "not a url" })),
        ("ftp endpoint", json!({ "endpoint": "ftp://example.com" })),
        ("bad region", json!({ "endpoint": null, "region": "North 4" })),
        ("unknown deletion policy", json!({ "deletionPolicy": "Delete" })),
    ];
    for (what, patch) in cases {
        let mut m = w.manifest("bad", "desk");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                m["spec"].as_object_mut().unwrap().remove(k);
            } else {
                m["spec"][k] = v.clone();
            }
        }
        // Untyped, so that values the Rust types would refuse still reach the apiserver.
        let untyped: kube::api::DynamicObject = serde_json::from_value(m).unwrap();
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            w.client.clone(),
            &w.namespace,
            &kube::core::ApiResource::erase::<workspace_assist::resource::RemoteAssistance>(&()),
        );
        let err = api.create(&Default::default(), &untyped).await.expect_err(what);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{what}: {err:?}"
        );
    }
    w.create(w.manifest("good", "desk")).await;
    for (what, spec) in [
        ("desktopId change", json!({ "desktopId": "other" })),
        ("projectId change", json!({ "projectId": "other" })),
    ] {
        let err = w.patch_spec("good", spec).await.expect_err(what);
        assert!(err.to_string().contains("immutable"), "{what}: {err}");
    }
}
