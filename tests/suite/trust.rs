//! Which cloud answers may release a finalizer, on the real control plane and the simulator:
//! only a confirmed cancel (204) or a 404 carrying a Workspace error. Every other answer the
//! real cloud, its gateway or a proxy can give keeps the finalizer on and the session is still
//! cancelled later; a `Closed` seen once is confirmed before release; a Create that races a
//! session started meanwhile adopts it; a desktop that does not exist is Stalled.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::operator::{CANCEL, CREATE, SHOW, phase};
use support::operator::{PROJECT, World, condition, condition_reason, eventually, has_finalizer};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};

const T: Duration = Duration::from_secs(30);

fn active(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Active)
}

fn attempted_with(ra: &RemoteAssistance, http_status: u16) -> bool {
    ra.status.as_ref().is_some_and(|s| {
        s.cancel_attempts >= 1
            && s.last_error
                .as_ref()
                .is_some_and(|e| e.http_status == Some(http_status))
    })
}

/// Answers to a cancel that must never count as "nothing to cancel", each with the HTTP status
/// it arrives with.
fn untrusted_answers() -> Vec<(&'static str, Fault, u16)> {
    vec![
        (
            "400 WKS.0001",
            Fault::error(
                400,
                "WKS.0001",
                "The request message input by the interface is empty",
            ),
            400,
        ),
        (
            "200 with an error body",
            Fault::error(200, "WKS.00010109", "an error delivered with HTTP 200"),
            200,
        ),
        ("foreign JSON 404", Fault::foreign_json_404(), 404),
        ("HTML 404", Fault::html(404), 404),
        (
            "empty 404",
            Fault::Raw {
                status: 404,
                content_type: "application/json".into(),
                body: vec![],
                headers: vec![],
            },
            404,
        ),
        (
            "gateway 404",
            Fault::error(404, "APIGW.0404", "not found at the gateway"),
            404,
        ),
    ]
}

#[tokio::test]
async fn only_a_confirmed_cancel_or_a_workspace_404_releases_the_finalizer() {
    let mut w = World::new("trust").await;
    let cases = untrusted_answers();
    let desk = |i: usize| format!("desk-untrusted-{i}");
    for (i, (_, fault, _)) in cases.iter().enumerate() {
        w.sim.open_session(PROJECT, &desk(i));
        w.sim
            .inject(FaultRule::new(&desk(i), CANCEL, vec![fault.clone()]));
    }
    let mut config = w.config();
    config.backoff.base = Duration::from_secs(5); // time to look at the object between attempts
    w.start_operator(config);
    for i in 0..cases.len() {
        w.create(w.manifest(&format!("ra-{i}"), &desk(i))).await;
    }
    for i in 0..cases.len() {
        w.wait_for(&format!("ra-{i}"), T, "Active", active).await;
        w.delete(&format!("ra-{i}")).await;
    }
    for (i, (what, _, status)) in cases.iter().enumerate() {
        let name = format!("ra-{i}");
        let ra = w
            .wait_for(&name, T, &format!("refused by {what}"), |ra| {
                attempted_with(ra, *status)
            })
            .await;
        assert!(has_finalizer(&ra), "{what}: the finalizer stays");
        assert!(
            w.sim.session(PROJECT, &desk(i)).unwrap().in_progress(),
            "{what}: the session is still open"
        );
        assert!(
            !w.event_reasons(&name, None)
                .await
                .contains(&"NothingToCancel".to_string()),
            "{what}: no NothingToCancel"
        );
        // Answers that need a person are rechecked slowly: ask for a retry now.
        if condition(&ra, "Stalled").as_deref() == Some("True") {
            w.annotate(&name, json!({ "workspace.assist.dev/retry": "1" }))
                .await;
        }
    }
    for (i, (what, _, _)) in cases.iter().enumerate() {
        w.wait_gone(&format!("ra-{i}"), T).await;
        assert!(
            !w.sim.session(PROJECT, &desk(i)).unwrap().in_progress(),
            "{what}: cancelled before the object went"
        );
        assert_eq!(
            w.sim.count(CANCEL, &desk(i)),
            2,
            "{what}: the refused cancel, then the confirmed one"
        );
    }
    w.stop_operator().await;
}

#[tokio::test]
async fn a_closed_resource_is_confirmed_and_a_reopened_session_cancelled_before_release() {
    let mut w = World::new("trust").await;
    w.start_operator(w.config());
    for name in ["same", "other"] {
        w.create(w.manifest(name, &format!("desk-reopened-{name}"))).await;
    }
    for name in ["same", "other"] {
        w.wait_for(name, T, "Active", active).await;
        w.sim
            .set_session_status(PROJECT, &format!("desk-reopened-{name}"), "CLOSE");
    }
    for name in ["same", "other"] {
        w.wait_for(name, T, "Closed", |ra| phase(ra) == Some(Phase::Closed))
            .await;
    }
    // The session this resource held is in progress again (the same share space): the
    // resource still says Closed, and its deletion cancels it before the finalizer comes off.
    w.sim.set_session_status(PROJECT, "desk-reopened-same", "OPEN");
    // On the other desktop the user started a new session (another share space): it proves the
    // held one ended, and it is not this resource's to cancel.
    let newer = w.sim.open_session(PROJECT, "desk-reopened-other");
    let shows_before: Vec<usize> = ["same", "other"]
        .iter()
        .map(|n| w.sim.count(SHOW, &format!("desk-reopened-{n}")))
        .collect();
    for name in ["same", "other"] {
        w.delete(name).await;
    }
    for (i, name) in ["same", "other"].iter().enumerate() {
        w.wait_gone(name, T).await;
        assert!(
            w.sim.count(SHOW, &format!("desk-reopened-{name}")) > shows_before[i],
            "{name}: the cloud was asked again"
        );
    }
    assert_eq!(
        w.sim.count(CANCEL, "desk-reopened-same"),
        1,
        "the held session in progress again was cancelled"
    );
    assert!(
        !w.sim
            .session(PROJECT, "desk-reopened-same")
            .unwrap()
            .in_progress()
    );
    assert_eq!(
        w.sim.count(CANCEL, "desk-reopened-other"),
        0,
        "another session is never cancelled"
    );
    let now = w.sim.session(PROJECT, "desk-reopened-other").unwrap();
    assert!(now.in_progress() && now.share_space_id == newer.share_space_id);
    w.stop_operator().await;
}

#[tokio::test]
async fn a_closed_resource_is_released_only_on_a_show_without_an_error_shape() {
    let mut w = World::new("trust").await;
    w.start_operator(w.config());
    for name in ["spec", "del"] {
        w.create(w.manifest(name, &format!("desk-closed-{name}"))).await;
    }
    for name in ["spec", "del"] {
        w.wait_for(name, T, "Active", active).await;
        w.sim
            .set_session_status(PROJECT, &format!("desk-closed-{name}"), "CLOSE");
    }
    for name in ["spec", "del"] {
        w.wait_for(name, T, "Closed", |ra| phase(ra) == Some(Phase::Closed))
            .await;
        // The next look at the cloud answers 200 with an error body: not a "no session".
        w.sim.inject(FaultRule::new(
            &format!("desk-closed-{name}"),
            SHOW,
            vec![Fault::error(200, "WKS.00010306", "busy")],
        ));
    }
    w.patch_spec("spec", json!({ "cancelled": true })).await.unwrap();
    w.delete("del").await;
    for name in ["spec", "del"] {
        let ra = w
            .wait_for(name, T, "refused by a 200 error", |ra| {
                ra.status
                    .as_ref()
                    .and_then(|s| s.last_error.as_ref())
                    .is_some_and(|e| e.http_status == Some(200))
            })
            .await;
        assert!(has_finalizer(&ra), "{name}: the finalizer stays");
        assert_ne!(phase(&ra), Some(Phase::Cancelled), "{name}");
        w.annotate(name, json!({ "workspace.assist.dev/retry": "1" }))
            .await;
    }
    // Released now on a confirmation: a Show without an error shape, or (the failure having
    // replaced the Closed phase) a cancel that the cloud answers with a Workspace 404.
    w.wait_for("spec", T, "Cancelled", |ra| phase(ra) == Some(Phase::Cancelled))
        .await;
    w.wait_gone("del", T).await;
    eventually(T, "a NothingToCancel Event", || async {
        w.event_reasons("spec", None)
            .await
            .contains(&"NothingToCancel".to_string())
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn a_create_that_races_a_session_started_meanwhile_adopts_it() {
    let mut w = World::new("trust").await;
    w.sim.inject(FaultRule::new(
        "desk-race",
        CREATE,
        vec![Fault::SessionStartedMeanwhile],
    ));
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-race")).await;
    let ra = w.wait_for("ra", T, "Active", active).await;
    let session = w.sim.session(PROJECT, "desk-race").unwrap();
    assert_eq!(
        session.initiator_type, "ENDUSER_INITIATE",
        "the user's session, not a second one"
    );
    let facts = ra.status.as_ref().unwrap().assistance.as_ref().unwrap();
    assert_eq!(
        facts.share_space_id.as_deref(),
        Some(session.share_space_id.as_str())
    );
    assert!(!facts.created_by_operator, "adopted");
    assert_eq!(w.sim.count(CREATE, "desk-race"), 1);
    assert!(ra.status.as_ref().unwrap().last_error.is_none(), "not a failure");
    assert!(
        w.event_reasons("ra", Some("Warning")).await.is_empty(),
        "no Warning Event"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn a_desktop_that_does_not_exist_is_stalled_and_deleting_it_needs_no_cancel() {
    let mut w = World::new("trust").await;
    w.sim.remove_desktop(PROJECT, "desk-missing");
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-missing")).await;
    let ra = w
        .wait_for("ra", T, "Stalled", |ra| {
            condition(ra, "Stalled").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        condition_reason(&ra, "Stalled").as_deref(),
        Some("DesktopNotFound")
    );
    assert_eq!(condition(&ra, "Reconciling"), None, "not progressing forever");
    assert_eq!(phase(&ra), Some(Phase::Failed));
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .http_status,
        Some(404)
    );
    assert_eq!(
        w.sim.count(CREATE, "desk-missing"),
        0,
        "no create for a desktop the cloud does not know"
    );
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    // What the code promises: one cancel, whose Workspace 404 is the evidence.
    assert_eq!(w.sim.count(CANCEL, "desk-missing"), 1);

    // The same, when that cancel meets something in between (a proxy's 404): not evidence; the
    // finalizer stays until the cloud itself answers.
    w.sim.remove_desktop(PROJECT, "desk-missing-2");
    w.create(w.manifest("ra2", "desk-missing-2")).await;
    w.wait_for("ra2", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").as_deref() == Some("DesktopNotFound")
    })
    .await;
    w.sim.inject(FaultRule::new(
        "desk-missing-2",
        CANCEL,
        vec![Fault::foreign_json_404()],
    ));
    w.delete("ra2").await;
    let ra = w
        .wait_for("ra2", T, "the proxy's 404 recorded", |ra| {
            ra.status
                .as_ref()
                .and_then(|s| s.last_error.as_ref())
                .is_some_and(|e| {
                    e.operation == "CancelRemoteAssistance" && e.error_code.as_deref() == Some("404")
                })
        })
        .await;
    assert!(has_finalizer(&ra), "a foreign 404 keeps the finalizer on");
    w.wait_gone("ra2", T).await;
    assert_eq!(
        w.sim.count(CANCEL, "desk-missing-2"),
        2,
        "retried until the cloud's own 404"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn a_one_mebibyte_error_body_leaves_a_bounded_status_and_event() {
    let mut w = World::new("trust").await;
    w.sim.open_session(PROJECT, "desk-huge");
    // Close to the 1 MiB the client reads: a 700 KB message and a 300 KB detail.
    let huge = Fault::Error {
        status: 403,
        code: "WKS.00010003".into(),
        message: "m".repeat(700_000),
        detail: Some("d".repeat(300_000)),
        encoded_authorization_message: Some("e".repeat(20_000)),
    };
    w.sim.inject(FaultRule::new("desk-huge", CANCEL, vec![huge]));
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-huge")).await;
    w.wait_for("ra", T, "Active", active).await;
    w.delete("ra").await;
    let ra = w
        .wait_for("ra", T, "Stalled on the huge 403", |ra| {
            condition_reason(ra, "Stalled").as_deref() == Some("Forbidden")
        })
        .await;
    let status = ra.status.as_ref().unwrap();
    let e = status.last_error.as_ref().unwrap();
    assert_eq!(e.error_code.as_deref(), Some("WKS.00010003"));
    let marker = workspace_assist::text::TRUNCATION_MARKER;
    for (field, text, max) in [
        ("errorMessage", &e.error_message, 1024),
        ("errorDetail", &e.error_detail, 1024),
        (
            "encodedAuthorizationMessage",
            &e.encoded_authorization_message,
            4096,
        ),
    ] {
        let text = text.as_deref().unwrap_or_else(|| panic!("{field} recorded"));
        assert!(
            text.len() <= max && text.ends_with(marker),
            "{field}: {} bytes",
            text.len()
        );
    }
    assert!(
        status.conditions.iter().all(|c| c.message.len() <= 1024),
        "condition messages bounded"
    );
    assert!(
        serde_json::to_string(status).unwrap().len() < 16 * 1024,
        "the whole status stays small"
    );
    eventually(T, "a bounded Forbidden Event", || async {
        let events: kube::Api<k8s_openapi::api::events::v1::Event> =
            kube::Api::namespaced(w.client.clone(), &w.namespace);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Forbidden")
                    && e.note
                        .as_ref()
                        .is_some_and(|n| n.len() <= 1024 && n.ends_with(marker))
            })
    })
    .await;
    w.stop_operator().await;
}
