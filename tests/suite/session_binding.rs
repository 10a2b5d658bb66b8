//! A session is bound to where it was opened, a finalizer comes off only on evidence that its
//! session is over, one desktop has one holder, and no edit escapes the admin's cap: on the
//! real control plane and the simulator, with answers that leave out the contract's optional
//! fields.

use crate::support;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::operator::{CANCEL, CREATE, SHOW, phase};
use support::operator::{PROJECT, World, condition, condition_reason, eventually, has_finalizer};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule, Simulator};

const T: Duration = Duration::from_secs(20);

fn active(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Active)
        && ra
            .status
            .as_ref()
            .is_some_and(|s| s.invitation_secret_name.is_some())
}

fn stalled_because(ra: &RemoteAssistance, reason: &str) -> bool {
    condition(ra, "Stalled").as_deref() == Some("True")
        && condition_reason(ra, "Stalled").as_deref() == Some(reason)
}

fn stalled_message(ra: &RemoteAssistance) -> String {
    ra.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Every optional field but the status: what a gateway or an older API version may answer.
const ALL_BUT_STATUS: [&str; 8] = [
    "share_space_id",
    "share_space_name",
    "create_time",
    "invitation_code",
    "share_space_passwd",
    "private_share_link",
    "internet_share_link",
    "failed_reason",
];

#[tokio::test]
async fn an_answer_without_a_recognisable_session_never_closes_a_held_one() {
    let mut w = World::new("bind").await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-odd")).await;
    w.wait_for("ra", T, "Active", active).await;

    let held_id = w
        .api()
        .get("ra")
        .await
        .unwrap()
        .status
        .unwrap()
        .session
        .unwrap()
        .share_space_id;
    assert!(held_id.is_some());
    // From now on every Show leaves out everything, status included: it proves nothing.
    w.sim.omit_fields(&["status", "share_space_id", "create_time"]);
    let shows = w.sim.count(SHOW, "desk-odd");
    let ra = w
        .wait_for("ra", T, "SessionUnknown", |ra| {
            condition_reason(ra, "Synced").as_deref() == Some("SessionUnknown")
        })
        .await;
    assert_eq!(phase(&ra), Some(Phase::Active), "still held: {:?}", ra.status);
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .session
            .as_ref()
            .unwrap()
            .share_space_id,
        held_id,
        "an id once known is kept"
    );
    // It keeps polling (no Closed, which would stop it).
    eventually(T, "two more polls", || async {
        w.sim.count(SHOW, "desk-odd") >= shows + 2
    })
    .await;
    assert!(
        !w.event_reasons("ra", None)
            .await
            .contains(&"ClosedRemotely".to_string())
    );

    // Only the id left out, the session in progress: held as before, id kept.
    w.sim.omit_fields(&["share_space_id"]);
    let ra = w
        .wait_for("ra", T, "Active again", |ra| {
            condition_reason(ra, "Synced").as_deref() == Some("Synced")
        })
        .await;
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .session
            .as_ref()
            .unwrap()
            .share_space_id,
        held_id
    );
    assert_eq!(
        ra.status
            .as_ref()
            .unwrap()
            .assistance
            .as_ref()
            .unwrap()
            .share_space_id,
        held_id
    );
    // A 200 carrying only an error code is an error, not an answer about the session.
    w.sim.omit_fields(&[]);
    w.sim.inject(FaultRule::new(
        "desk-odd",
        SHOW,
        vec![Fault::Raw {
            status: 200,
            content_type: "application/json".into(),
            body: br#"{"error_code":"WKS.00010109"}"#.to_vec(),
            headers: vec![],
        }],
    ));
    let ra = w
        .wait_for("ra", T, "the 200 error recorded", |ra| {
            ra.status
                .as_ref()
                .and_then(|s| s.last_error.as_ref())
                .and_then(|e| e.error_code.as_deref())
                == Some("WKS.00010109")
        })
        .await;
    assert_ne!(phase(&ra), Some(Phase::Closed));

    // Deleting it sends exactly one cancel, and the finalizer comes off on its 204 only.
    w.sim.omit_fields(&["status", "share_space_id"]);
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-odd"), 1);
    assert!(
        !w.sim.session(PROJECT, "desk-odd").unwrap().in_progress(),
        "the session is cancelled in the cloud"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn a_session_without_optional_fields_is_held_from_first_sight_and_meets_its_deadline() {
    let mut w = World::new("bind").await;
    w.sim.omit_fields(&ALL_BUT_STATUS);
    w.start_operator(w.config());
    let mut m = w.manifest("ra", "desk-bare");
    m["spec"]["maxDuration"] = json!("4s");
    w.create(m).await;
    let ra = w.wait_for("ra", T, "Active", active).await;
    let held = ra
        .status
        .as_ref()
        .unwrap()
        .session
        .clone()
        .expect("status.session");
    let first_sight = held.held_since.clone().expect("heldSince");
    assert_eq!(held.share_space_id, None, "no answer carried one");
    assert!(
        ra.status.as_ref().unwrap().expires_at.is_some(),
        "a deadline without any id or creation time"
    );
    // Polls pass; first sight never moves.
    let shows = w.sim.count(SHOW, "desk-bare");
    eventually(T, "two more polls", || async {
        w.sim.count(SHOW, "desk-bare") >= shows + 2
    })
    .await;
    let ra = w.api().get("ra").await.unwrap();
    if let Some(b) = ra.status.as_ref().and_then(|s| s.session.as_ref()) {
        assert_eq!(b.held_since.as_ref(), Some(&first_sight), "heldSince moved");
    }
    let ra = w
        .wait_for("ra", T, "Cancelled at its deadline", |ra| {
            ra.status
                .as_ref()
                .is_some_and(|s| s.deadline_exceeded_at.is_some())
                && phase(ra) == Some(Phase::Cancelled)
        })
        .await;
    let status = ra.status.as_ref().unwrap();
    assert!(
        status.deadline_exceeded_at.as_ref().unwrap().0
            >= first_sight
                .0
                .checked_add(jiff::SignedDuration::from_secs(4))
                .unwrap()
    );
    assert_eq!(w.sim.count(CANCEL, "desk-bare"), 1);
    assert_eq!(w.sim.count(CREATE, "desk-bare"), 1);
    w.stop_operator().await;
}

#[tokio::test]
async fn a_declined_session_without_ids_is_closed_not_created_again() {
    let mut w = World::new("bind").await;
    w.sim.omit_fields(&ALL_BUT_STATUS);
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-declined")).await;
    w.wait_for("ra", T, "Active", active).await;
    // The desktop's user declines: the cloud says CLOSE (without any id).
    w.sim.set_session_status(PROJECT, "desk-declined", "CLOSE");
    w.wait_for("ra", T, "Closed", |ra| phase(ra) == Some(Phase::Closed))
        .await;
    let shows = w.sim.count(SHOW, "desk-declined");
    // Time for several polls, had Closed not stopped them (counted on another resource's
    // polls, at the same interval): none, and never a second Create.
    w.sim.omit_fields(&[]);
    w.create(w.manifest("ticker", "desk-ticker")).await;
    w.wait_for("ticker", T, "Active", active).await;
    let ticks = w.sim.count(SHOW, "desk-ticker");
    eventually(T, "four polls of the ticker", || async {
        w.sim.count(SHOW, "desk-ticker") >= ticks + 4
    })
    .await;
    assert_eq!(
        w.sim.count(CREATE, "desk-declined"),
        1,
        "no new request for a declined session"
    );
    assert_eq!(
        w.sim.count(SHOW, "desk-declined"),
        shows,
        "a Closed object polls no more"
    );
    // Deleting it: a clean Show that says CLOSE is the evidence; no cancel is needed.
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-declined"), 0);
    w.stop_operator().await;
}

#[tokio::test]
async fn a_held_session_is_cancelled_where_it_was_opened_and_its_place_cannot_change() {
    let mut w = World::new("bind").await;
    let elsewhere = Simulator::start().await.unwrap();
    elsewhere.add_access_key(support::operator::AK, support::operator::SK);
    let mut config = w.config();
    config
        .endpoints
        .extra
        .push(workspace_assist::controller::EndpointRule::parse(&elsewhere.endpoint()).unwrap());
    w.start_operator(config);
    w.put_secret(
        "other-credentials",
        &[
            ("accessKeyId", support::operator::AK),
            ("secretAccessKey", support::operator::SK),
        ],
    )
    .await;
    w.create(w.manifest("ra", "desk-bound")).await;
    let ra = w.wait_for("ra", T, "Active", active).await;
    let b = ra.status.as_ref().unwrap().session.clone().unwrap();
    assert_eq!(
        url::Url::parse(&b.endpoint).unwrap(),
        url::Url::parse(&w.sim.endpoint()).unwrap()
    );
    assert_eq!(
        (
            b.project_id.as_str(),
            b.desktop_id.as_str(),
            b.credentials_secret_name.as_deref()
        ),
        (PROJECT, "desk-bound", Some(support::operator::SECRET))
    );

    // The API server refuses to move a held session's place.
    for change in [
        json!({ "endpoint": elsewhere.endpoint() }),
        json!({ "region": "cn-north-4" }),
        json!({ "credentialsSecretRef": { "name": "other-credentials" } }),
    ] {
        let refused = w
            .patch_spec("ra", change.clone())
            .await
            .expect_err("a held session's place cannot change");
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains("while the resource holds a session")),
            "{change}: {refused}"
        );
    }
    // Another spec edit is fine.
    w.patch_spec("ra", json!({ "maxDuration": "1h" }))
        .await
        .expect("other fields stay editable");

    // The cancel goes where the session lives; then the object holds nothing and may move.
    w.patch_spec("ra", json!({ "cancelled": true })).await.unwrap();
    let ra = w
        .wait_for("ra", T, "Cancelled", |ra| phase(ra) == Some(Phase::Cancelled))
        .await;
    assert!(
        ra.status.as_ref().unwrap().session.is_none(),
        "nothing is bound once the session is over"
    );
    assert_eq!(w.sim.count(CANCEL, "desk-bound"), 1);
    assert_eq!(
        elsewhere.requests().len(),
        0,
        "nothing went to the other endpoint"
    );
    w.patch_spec("ra", json!({ "endpoint": elsewhere.endpoint() }))
        .await
        .expect("an object that holds nothing may move");
    w.stop_operator().await;
}

#[tokio::test]
async fn a_desktop_has_one_holder_and_the_next_takes_over_when_it_lets_go() {
    let mut w = World::new("bind").await;
    let other_ns = support::fresh_namespace(&w.client, "bind-other").await;
    let label = format!("bind-{:08x}", rand::random::<u32>());
    let mut config = w.config();
    config.namespace = None;
    config.label_selector = Some(format!("test={label}"));
    w.start_operator(config);
    let labelled = |mut m: serde_json::Value| {
        m["metadata"]["labels"] = json!({ "test": label });
        m
    };
    w.create(labelled(w.manifest("first", "desk-shared"))).await;
    let first = w.wait_for("first", T, "Active", active).await;
    let session = w.sim.session(PROJECT, "desk-shared").unwrap();

    // A second one in the same namespace waits, told who holds the desktop.
    w.create(labelled(w.manifest("second", "desk-shared"))).await;
    let second = w
        .wait_for("second", T, "DesktopInUse", |ra| {
            stalled_because(ra, "DesktopInUse")
        })
        .await;
    assert!(
        stalled_message(&second).contains("RemoteAssistance first holds"),
        "{}",
        stalled_message(&second)
    );
    assert!(
        second.status.as_ref().unwrap().session.is_none()
            && second.status.as_ref().unwrap().invitation_secret_name.is_none()
    );
    // One in another namespace waits too, and is not told the holder's name.
    w.put_secret_in(&other_ns).await;
    let mut m = labelled(w.manifest("third", "desk-shared"));
    m["metadata"]["namespace"] = json!(other_ns);
    let third_api: Api<RemoteAssistance> = Api::namespaced(w.client.clone(), &other_ns);
    third_api
        .create(&Default::default(), &serde_json::from_value(m).unwrap())
        .await
        .unwrap();
    eventually(T, "third DesktopInUse", || async {
        third_api
            .get("third")
            .await
            .is_ok_and(|ra| stalled_because(&ra, "DesktopInUse"))
    })
    .await;
    let third = third_api.get("third").await.unwrap();
    assert!(
        !stalled_message(&third).contains("first") && !stalled_message(&third).contains(&w.namespace),
        "{}",
        stalled_message(&third)
    );

    // Deleting a waiter ends nothing: it never held the session.
    w.delete("second").await;
    w.wait_gone("second", T).await;
    assert_eq!(
        w.sim.count(CANCEL, "desk-shared"),
        0,
        "a waiter's deletion cancels nothing"
    );
    assert_eq!(
        w.sim.count(CREATE, "desk-shared"),
        1,
        "waiters made no call that could start or end a session"
    );
    assert!(w.sim.session(PROJECT, "desk-shared").unwrap().in_progress());
    assert_eq!(
        w.api()
            .get("first")
            .await
            .unwrap()
            .status
            .unwrap()
            .session
            .unwrap()
            .share_space_id,
        first.status.unwrap().session.unwrap().share_space_id
    );

    // The holder goes (one cancel); the waiter takes over with a session of its own.
    w.delete("first").await;
    w.wait_gone("first", T).await;
    eventually(T, "third Active", || async {
        third_api.get("third").await.is_ok_and(|ra| active(&ra))
    })
    .await;
    assert_eq!(w.sim.count(CANCEL, "desk-shared"), 1);
    assert_eq!(w.sim.count(CREATE, "desk-shared"), 2);
    assert_ne!(
        w.sim.session(PROJECT, "desk-shared").unwrap().share_space_id,
        session.share_space_id
    );
    third_api.delete("third", &Default::default()).await.unwrap();
    eventually(T, "third gone", || async {
        third_api.get_opt("third").await.unwrap().is_none()
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn a_closed_resource_never_cancels_a_newer_session_it_did_not_hold() {
    let mut w = World::new("bind").await;
    w.start_operator(w.config());
    w.create(w.manifest("old", "desk-reused")).await;
    w.wait_for("old", T, "Active", active).await;
    w.sim.set_session_status(PROJECT, "desk-reused", "CLOSE");
    w.wait_for("old", T, "Closed", |ra| phase(ra) == Some(Phase::Closed))
        .await;
    // A new resource starts a new session on the same desktop.
    w.create(w.manifest("new", "desk-reused")).await;
    w.wait_for("new", T, "Active", active).await;
    let newer = w.sim.session(PROJECT, "desk-reused").unwrap();
    // The old one goes (as its TTL would delete it): its session is over; the newer stays.
    w.delete("old").await;
    w.wait_gone("old", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-reused"), 0);
    let now = w.sim.session(PROJECT, "desk-reused").unwrap();
    assert!(
        now.in_progress() && now.share_space_id == newer.share_space_id,
        "the newer session is left alone"
    );
    assert!(active(&w.api().get("new").await.unwrap()));
    w.delete("new").await;
    w.wait_gone("new", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-reused"), 1);
    w.stop_operator().await;
}

#[tokio::test]
async fn the_admins_cap_holds_for_a_paused_resource_and_an_unparseable_duration_is_refused() {
    let mut w = World::new("bind").await;
    // The API server refuses a duration the parser would not accept.
    let mut m = w.manifest("huge", "desk-huge");
    m["spec"]["maxDuration"] = json!("99999999999h");
    let refused = w
        .api()
        .create(&Default::default(), &serde_json::from_value(m).unwrap())
        .await
        .expect_err("refused");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains("maxDuration")),
        "{refused}"
    );
    let mut m = w.manifest("huge", "desk-huge");
    m["spec"]["maxDuration"] = json!("876001h");
    assert!(
        w.api()
            .create(&Default::default(), &serde_json::from_value(m).unwrap())
            .await
            .is_err(),
        "beyond 100 years"
    );
    // Nor an ID a URL would collapse (the path sent would not be the path signed).
    for id in [".", ".."] {
        let m = w.manifest("dots", id);
        let refused = w
            .api()
            .create(&Default::default(), &serde_json::from_value(m).unwrap())
            .await
            .expect_err("refused");
        assert!(
            refused.to_string().contains("desktopId cannot be . or .."),
            "{refused}"
        );
    }

    let mut config = w.config();
    config.limits.max_duration = Some(Duration::from_secs(6));
    w.start_operator(config);
    w.create(w.manifest("paused", "desk-capped")).await;
    w.wait_for("paused", T, "Active", active).await;
    w.annotate("paused", json!({ "workspace.assist.dev/paused": "true" }))
        .await;
    w.wait_for("paused", T, "Paused", |ra| {
        condition_reason(ra, "Synced").as_deref() == Some("Paused")
    })
    .await;
    let ra = w
        .wait_for("paused", T, "cancelled at the admin's cap though paused", |ra| {
            ra.status
                .as_ref()
                .is_some_and(|s| s.deadline_exceeded_at.is_some())
        })
        .await;
    assert_eq!(phase(&ra), Some(Phase::Cancelled));
    assert_eq!(w.sim.count(CANCEL, "desk-capped"), 1);
    assert!(!w.sim.session(PROJECT, "desk-capped").unwrap().in_progress());
    w.stop_operator().await;
}

#[tokio::test]
async fn orphaning_a_time_boxed_session_can_be_refused() {
    let mut w = World::new("bind").await;
    let mut config = w.config();
    config.refuse_orphan_time_boxed = true;
    w.start_operator(config);
    let mut m = w.manifest("boxed", "desk-orphan");
    m["spec"]["maxDuration"] = json!("1h");
    m["spec"]["deletionPolicy"] = json!("Orphan");
    w.create(m).await;
    w.wait_for("boxed", T, "Active", active).await;
    let mut m = w.manifest("free", "desk-orphan-free");
    m["spec"]["deletionPolicy"] = json!("Orphan");
    w.create(m).await;
    w.wait_for("free", T, "Active", active).await;
    w.delete("boxed").await;
    w.delete("free").await;
    w.wait_gone("boxed", T).await;
    w.wait_gone("free", T).await;
    assert_eq!(
        w.sim.count(CANCEL, "desk-orphan"),
        1,
        "the time-boxed session is cancelled all the same"
    );
    assert_eq!(
        w.sim.count(CANCEL, "desk-orphan-free"),
        0,
        "one without a deadline is orphaned as asked"
    );
    assert!(w.sim.session(PROJECT, "desk-orphan-free").unwrap().in_progress());
    eventually(T, "the OrphanRefused Event", || async {
        w.event_reasons("boxed", Some("Warning"))
            .await
            .contains(&"OrphanRefused".to_string())
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn revoking_the_default_credentials_stops_new_sessions_never_a_held_ones_cancel() {
    let mut w = World::new("bind").await;
    let mut config = w.config();
    config.default_credentials = Some((w.namespace.clone(), support::operator::SECRET.to_string()));
    config.default_credentials_namespaces = Some(
        workspace_assist::controller::LabelSelector::parse(
            "workspace.assist.dev/default-credentials=allowed",
        )
        .unwrap(),
    );
    w.start_operator(config);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    let label = |value: serde_json::Value| {
        let namespaces = namespaces.clone();
        let name = w.namespace.clone();
        async move {
            namespaces.patch(&name, &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "workspace.assist.dev/default-credentials": value } } }))).await.unwrap();
        }
    };
    let without_secret = |name: &str, desktop: &str| {
        let mut m = w.manifest(name, desktop);
        m["spec"].as_object_mut().unwrap().remove("credentialsSecretRef");
        m
    };
    // Not allowed yet: Stalled. Labelling the namespace re-drives it at once (the slow
    // recheck is 10 minutes here).
    w.create(without_secret("held", "desk-revoke")).await;
    w.wait_for("held", T, "DefaultCredentialsNotAllowed", |ra| {
        stalled_because(ra, "DefaultCredentialsNotAllowed")
    })
    .await;
    label(json!("allowed")).await;
    w.wait_for("held", T, "Active once the namespace is allowed", active)
        .await;

    // Revoked: a new session is refused, the held one is still cancelled (and confirmed).
    label(serde_json::Value::Null).await;
    w.create(without_secret("new", "desk-revoke-new")).await;
    w.wait_for("new", T, "DefaultCredentialsNotAllowed", |ra| {
        stalled_because(ra, "DefaultCredentialsNotAllowed")
    })
    .await;
    assert_eq!(w.sim.count(CREATE, "desk-revoke-new"), 0);
    w.delete("held").await;
    w.wait_gone("held", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-revoke"), 1);
    assert!(!w.sim.session(PROJECT, "desk-revoke").unwrap().in_progress());
    // The one that never started stays refused (its finalizer on: nothing proves it has no
    // session, and it may not reach the cloud to find out).
    assert!(has_finalizer(&w.api().get("new").await.unwrap()));
    w.stop_operator().await;
}

#[tokio::test]
async fn the_sharding_component_refuses_moving_a_held_session_out_of_its_shard() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let w = World::new("bind").await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/components/sharding/validatingadmissionpolicy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let apply = PatchParams::apply(support::TEST_MANAGER).force();
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                Api::<ValidatingAdmissionPolicy>::all(w.client.clone())
                    .patch(&name, &apply, &Patch::Apply(&doc))
                    .await
                    .expect("the policy is valid");
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                Api::<ValidatingAdmissionPolicyBinding>::all(w.client.clone())
                    .patch(&name, &apply, &Patch::Apply(&doc))
                    .await
                    .expect("the binding is valid");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A resource that holds a session (its status written as the operator would) and one that
    // holds nothing; no operator runs here, only the API server decides.
    for name in ["held", "free"] {
        let mut m = w.manifest(name, &format!("desk-shard-{name}"));
        m["metadata"]["labels"] = json!({ "workspace.assist.dev/shard": "a" });
        w.create(m).await;
    }
    let status = json!({ "status": { "session": { "endpoint": w.sim.endpoint(), "projectId": PROJECT, "desktopId": "desk-shard-held" } } });
    w.api()
        .patch_status("held", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let relabel = |name: &'static str, value: serde_json::Value| {
        let api = w.api();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "workspace.assist.dev/shard": value } } })),
            )
            .await
        }
    };
    // The policy takes effect once the API server has loaded it.
    let probes = std::sync::atomic::AtomicU32::new(0);
    eventually(T, "the policy in force", || async {
        relabel(
            "held",
            json!(format!(
                "probe-{}",
                probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
        )
        .await
        .is_err()
    })
    .await;
    for value in [json!("c"), serde_json::Value::Null] {
        let refused = relabel("held", value.clone())
            .await
            .expect_err("a held session stays in its shard");
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 403 || s.code == 422),
            "{value}: {refused}"
        );
        assert!(
            refused
                .to_string()
                .contains("cannot change while the RemoteAssistance holds a session"),
            "{refused}"
        );
    }
    relabel("free", json!("b"))
        .await
        .expect("an object that holds nothing may move");
    w.api()
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "other": "x" } } })),
        )
        .await
        .expect("other labels stay editable");
    // Leave the cluster as it was for the other tests of this binary.
    Api::<ValidatingAdmissionPolicyBinding>::all(w.client.clone())
        .delete("workspace-assist-shard-label", &Default::default())
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(w.client.clone())
        .delete("workspace-assist-shard-label", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_session_whose_invitation_cannot_be_written_still_counts_from_first_sight() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let mut w = World::new("bind").await;
    // An admission policy of this namespace refuses every invitation Secret.
    let name = format!("no-invitations-{}", w.namespace);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["secrets"] }],
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": w.namespace } },
            },
            "validations": [{ "expression": "!has(object.metadata.labels) || !('workspace.assist.dev/invitation' in object.metadata.labels)", "message": "no invitations here" }],
        },
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": name }, "spec": { "policyName": name, "validationActions": ["Deny"] },
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(w.client.clone())
        .create(&Default::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(w.client.clone())
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let probes = std::sync::atomic::AtomicU32::new(0);
    eventually(T, "the policy in force", || async {
        let i = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({ "metadata": { "name": format!("probe-{i}"), "labels": { "workspace.assist.dev/invitation": "true" } } })).unwrap();
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.client.clone(), &w.namespace).create(&Default::default(), &probe).await.is_err()
    })
    .await;

    w.start_operator(w.config());
    let mut m = w.manifest("ra", "desk-quota");
    m["spec"]["maxDuration"] = json!("4s");
    w.create(m).await;
    let ra = w
        .wait_for("ra", T, "the refused invitation recorded", |ra| {
            condition_reason(ra, "Synced").as_deref() == Some("KubernetesApiError")
                || condition_reason(ra, "Synced").as_deref() == Some("KubernetesForbidden")
        })
        .await;
    let status = ra.status.as_ref().unwrap();
    let held = status
        .session
        .clone()
        .expect("the session is recorded though its invitation is not");
    assert!(
        held.held_since.is_some() && status.expires_at.is_some(),
        "{status:?}"
    );
    assert!(status.invitation_secret_name.is_none());
    // Its deadline holds all the same.
    w.wait_for("ra", T, "Cancelled at its deadline", |ra| {
        ra.status
            .as_ref()
            .is_some_and(|s| s.deadline_exceeded_at.is_some())
    })
    .await;
    assert_eq!(w.sim.count(CANCEL, "desk-quota"), 1);
    assert!(!w.sim.session(PROJECT, "desk-quota").unwrap().in_progress());
    w.stop_operator().await;
    Api::<ValidatingAdmissionPolicyBinding>::all(w.client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(w.client.clone())
        .delete(&name, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_secret_of_the_invitations_name_is_never_taken_over() {
    let mut w = World::new("bind").await;
    w.put_secret("ra-invitation", &[("mine", "keep me")]).await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-taken")).await;
    let ra = w
        .wait_for("ra", T, "InvitationSecretTaken", |ra| {
            stalled_because(ra, "InvitationSecretTaken")
        })
        .await;
    assert!(
        ra.status.as_ref().unwrap().session.is_some(),
        "the session is held all the same"
    );
    let secret = w.secret("ra-invitation").await.unwrap();
    assert_eq!(
        secret.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
        vec!["mine"],
        "the user's Secret is untouched"
    );
    assert!(secret.metadata.owner_references.is_none());
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-taken"), 1);
    assert!(
        w.secret("ra-invitation").await.is_some(),
        "and it is not deleted with the resource"
    );
    w.stop_operator().await;
}
