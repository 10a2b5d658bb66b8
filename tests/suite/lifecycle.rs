//! The whole remote-assistance lifecycle on the real control plane and the simulator: starting,
//! adopting and observing a session, its invitation Secret, sessions closed elsewhere, pausing,
//! deletion-policy precedence, credentials pinned through a namespace deletion, and IAM password
//! logins.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use support::operator::{CANCEL, CREATE, SHOW, phase};
use support::operator::{PROJECT, SECRET, World, condition, condition_reason, eventually, has_finalizer};
use workspace_assist::resource::{DeletionPolicy, Phase, RemoteAssistance, SECRET_FINALIZER};

const T: Duration = Duration::from_secs(20);

fn active_with_secret(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Active)
        && ra
            .status
            .as_ref()
            .is_some_and(|s| s.invitation_secret_name.is_some())
}

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test]
async fn creates_a_session_and_publishes_its_invitation_in_an_owned_secret() {
    let mut w = World::new("life").await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-new")).await;
    let ra = w
        .wait_for("ra", T, "Active with its invitation Secret", active_with_secret)
        .await;
    assert_eq!(w.sim.count(CREATE, "desk-new"), 1);

    let session = w
        .sim
        .session(PROJECT, "desk-new")
        .expect("the cloud has the session");
    let status = ra.status.as_ref().unwrap();
    let facts = status.assistance.as_ref().expect("status.assistance");
    assert_eq!(
        facts.share_space_id.as_deref(),
        Some(session.share_space_id.as_str())
    );
    assert_eq!(facts.status.as_deref(), Some("WAIT_USER_CONFIRM"));
    assert_eq!(facts.create_time.as_deref(), Some(session.create_time.as_str()));
    assert!(facts.created_by_operator);
    assert_eq!(condition(&ra, "Ready").as_deref(), Some("True"));

    let name = status.invitation_secret_name.clone().unwrap();
    let secret = w.secret(&name).await.expect("the invitation Secret exists");
    assert_eq!(text(&secret, "invitationCode"), session.invitation_code);
    assert_eq!(text(&secret, "shareSpacePassword"), session.share_space_passwd);
    assert!(text(&secret, "internetShareLink").starts_with("https://"));
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("RemoteAssistance", "ra", ra.uid().unwrap().as_str())
    );
    let status_json = serde_json::to_string(&ra.status).unwrap();
    assert!(
        !status_json.contains(&session.invitation_code) && !status_json.contains(&session.share_space_passwd),
        "no secret in status"
    );

    // The session moves on in the cloud: the operator keeps polling and records it.
    w.sim.set_session_status(PROJECT, "desk-new", "OPEN");
    w.wait_for("ra", T, "cloud status OPEN recorded", |ra| {
        ra.status
            .as_ref()
            .and_then(|s| s.assistance.as_ref())
            .and_then(|a| a.status.as_deref())
            == Some("OPEN")
    })
    .await;
    assert_eq!(w.sim.count(CREATE, "desk-new"), 1, "never a second create");

    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-new"), 1);
    // It goes with the resource (deleted alongside the cancel; the finalizer does not wait).
    eventually(T, "the invitation Secret is deleted", || async {
        w.secret(&name).await.is_none()
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn each_open_session_is_polled_once_per_interval() {
    let mut w = World::new("life").await;
    let mut config = w.config();
    config.poll_interval = Duration::from_secs(1);
    w.start_operator(config);
    for i in 0..3 {
        w.create(w.manifest(&format!("ra-{i}"), &format!("desk-poll-{i}")))
            .await;
    }
    for i in 0..3 {
        w.wait_for(&format!("ra-{i}"), T, "Active", active_with_secret)
            .await;
    }
    let before: Vec<usize> = (0..3)
        .map(|i| w.sim.count(SHOW, &format!("desk-poll-{i}")))
        .collect();
    // Polled again and again (liveness, waited for) ...
    for (i, before) in before.iter().enumerate() {
        let desk = format!("desk-poll-{i}");
        eventually(T, "five more polls", || async {
            w.sim.count(SHOW, &desk) >= before + 5
        })
        .await;
    }
    w.stop_operator().await;
    // ... and never more often than the interval: consecutive Shows of one desktop are at least
    // an interval apart (the scan runs every quarter interval; nothing can make it faster).
    for i in 0..3 {
        let desk = format!("desk-poll-{i}");
        let times: Vec<_> = w
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.desktop_id == desk && r.operation == Some(SHOW))
            .map(|r| r.at)
            .collect();
        let polls = &times[before[i]..];
        for pair in polls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(950),
                "resource {i}: two Shows {gap:?} apart at a 1 s poll interval"
            );
        }
    }
}

#[tokio::test]
async fn adopts_a_session_already_in_progress() {
    let mut w = World::new("life").await;
    let session = w.sim.open_session(PROJECT, "desk-user");
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-user")).await;
    let ra = w.wait_for("ra", T, "Active", active_with_secret).await;
    let facts = ra.status.as_ref().unwrap().assistance.clone().unwrap();
    assert_eq!(
        facts.share_space_id.as_deref(),
        Some(session.share_space_id.as_str())
    );
    assert!(!facts.created_by_operator);
    assert_eq!(w.sim.count(CREATE, "desk-user"), 0, "no second create");
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-user"), 1);
    w.stop_operator().await;
}

#[tokio::test]
async fn initiate_false_only_observes_and_cancels() {
    let mut w = World::new("life").await;
    w.start_operator(w.config());
    let mut m = w.manifest("ra", "desk-watch");
    m["spec"]["initiate"] = json!(false);
    w.create(m).await;
    let ra = w
        .wait_for("ra", T, "Pending", |ra| phase(ra) == Some(Phase::Pending))
        .await;
    assert_eq!(condition_reason(&ra, "Ready").as_deref(), Some("NoAssistance"));
    assert_eq!(condition(&ra, "Reconciling").as_deref(), Some("True"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(w.sim.count(SHOW, "desk-watch") >= 2, "it keeps observing");
    assert_eq!(w.sim.count(CREATE, "desk-watch"), 0, "never creates");

    w.sim.open_session(PROJECT, "desk-watch");
    w.wait_for(
        "ra",
        T,
        "Active once the user started a session",
        active_with_secret,
    )
    .await;
    w.patch_spec("ra", json!({ "cancelled": true })).await.unwrap();
    w.wait_for("ra", T, "Cancelled", |ra| phase(ra) == Some(Phase::Cancelled))
        .await;
    assert!(!w.sim.session(PROJECT, "desk-watch").unwrap().in_progress());
    assert_eq!(w.sim.count(CREATE, "desk-watch"), 0);
    w.stop_operator().await;
}

#[tokio::test]
async fn a_session_closed_elsewhere_is_reflected_and_never_cancelled() {
    let mut w = World::new("life").await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-closed")).await;
    let ra = w.wait_for("ra", T, "Active", active_with_secret).await;
    let invitation = ra.status.unwrap().invitation_secret_name.unwrap();
    w.sim.set_session_status(PROJECT, "desk-closed", "CLOSE");
    let ra = w
        .wait_for("ra", T, "Closed", |ra| phase(ra) == Some(Phase::Closed))
        .await;
    assert_eq!(condition_reason(&ra, "Ready").as_deref(), Some("ClosedRemotely"));
    assert_eq!(ra.status.as_ref().unwrap().invitation_secret_name, None);
    assert!(
        w.secret(&invitation).await.is_none(),
        "the secret parts of a closed session are deleted"
    );
    w.delete("ra").await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-closed"), 0, "nothing to cancel");
    assert_eq!(
        w.sim.count(CREATE, "desk-closed"),
        1,
        "a closed session is not restarted"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn paused_resources_make_no_cloud_calls() {
    let mut w = World::new("life").await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-pause")).await;
    w.wait_for("ra", T, "Active", active_with_secret).await;
    w.annotate("ra", json!({ "workspace.assist.dev/paused": "true" }))
        .await;
    let ra = w
        .wait_for("ra", T, "paused", |ra| {
            condition_reason(ra, "Synced").as_deref() == Some("Paused")
        })
        .await;
    assert_eq!(phase(&ra), Some(Phase::Active), "the phase stays");
    let before = w.sim.requests().len();
    w.delete("ra").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.sim.requests().len(), before, "no cloud call while paused");
    assert!(
        has_finalizer(&w.api().get("ra").await.unwrap()),
        "the finalizer stays"
    );

    w.annotate("ra", json!({ "workspace.assist.dev/paused": null }))
        .await;
    w.wait_gone("ra", T).await;
    assert_eq!(w.sim.count(CANCEL, "desk-pause"), 1);
    w.stop_operator().await;
}

#[tokio::test]
async fn deletion_policy_precedence_resource_then_namespace_then_flag() {
    let mut w = World::new("life").await;
    let mut config = w.config();
    config.default_deletion_policy = DeletionPolicy::Orphan;
    w.start_operator(config);
    w.annotate_namespace(json!({ "workspace.assist.dev/deletion-policy": "Cancel" }))
        .await;
    let cases = [
        ("ns-cancel", None, None),                       // namespace Cancel beats flag Orphan
        ("res-orphan", Some("Orphan"), None),            // resource annotation beats namespace
        ("spec-cancel", Some("Orphan"), Some("Cancel")), // spec beats the annotation
    ];
    for (name, annotation, spec) in cases {
        let mut m = w.manifest(name, name);
        if let Some(a) = annotation {
            m["metadata"]["annotations"] = json!({ "workspace.assist.dev/deletion-policy": a });
        }
        if let Some(p) = spec {
            m["spec"]["deletionPolicy"] = json!(p);
        }
        w.create(m).await;
        w.wait_for(name, T, "Active", active_with_secret).await;
        w.delete(name).await;
        w.wait_gone(name, T).await;
    }
    assert_eq!(w.sim.count(CANCEL, "ns-cancel"), 1);
    assert_eq!(w.sim.count(CANCEL, "res-orphan"), 0);
    assert_eq!(w.sim.count(CANCEL, "spec-cancel"), 1);

    w.annotate_namespace(json!({ "workspace.assist.dev/deletion-policy": null }))
        .await;
    w.create(w.manifest("flag-orphan", "flag-orphan")).await;
    w.wait_for("flag-orphan", T, "Active", active_with_secret).await;
    w.delete("flag-orphan").await;
    w.wait_gone("flag-orphan", T).await;
    assert_eq!(
        w.sim.count(CANCEL, "flag-orphan"),
        0,
        "the operator flag applies last"
    );
    assert!(
        w.sim.session(PROJECT, "flag-orphan").unwrap().in_progress(),
        "orphaned sessions stay open"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn deleting_the_namespace_cancels_everything_and_then_releases_the_secret() {
    let mut w = World::new("life").await;
    w.start_operator(w.config());
    let desks = ["ns-1", "ns-2", "ns-3"];
    for d in desks {
        w.create(w.manifest(d, d)).await;
    }
    for d in desks {
        w.wait_for(d, T, "Active", active_with_secret).await;
    }
    let secret = w.secret(SECRET).await.unwrap();
    assert!(
        secret.finalizers().iter().any(|f| f == SECRET_FINALIZER),
        "the credentials Secret is pinned"
    );

    // What the namespace controller does, in the unlucky order: the Secret first.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    namespaces
        .delete(&w.namespace, &DeleteParams::default())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.namespace);
    secrets.delete(SECRET, &DeleteParams::default()).await.unwrap();
    let pinned = w
        .secret(SECRET)
        .await
        .expect("the pinned Secret survives its deletion for now");
    assert!(pinned.metadata.deletion_timestamp.is_some());
    for d in desks {
        w.delete(d).await;
    }
    for d in desks {
        w.wait_gone(d, T).await;
        assert_eq!(w.sim.count(CANCEL, d), 1, "{d} was cancelled");
    }
    support::operator::eventually(T, "the Secret released and gone", || async {
        w.secret(SECRET).await.is_none()
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn password_logins_get_a_cached_token_renewed_when_expired() {
    let mut w = World::new("life").await;
    w.sim.add_iam_user("acme", "helpdesk", "pa55-word-SECRET");
    w.put_secret(
        "iam-login",
        &[
            ("username", "helpdesk"),
            ("password", "pa55-word-SECRET"),
            ("domainName", "acme"),
            ("iamEndpoint", &w.sim.endpoint()),
        ],
    )
    .await;
    // No polling in between: only the calls this test makes use the token.
    let mut config = w.config();
    config.poll_interval = Duration::from_secs(3600);
    w.start_operator(config);
    for name in ["pw-1", "pw-2"] {
        let mut m = w.manifest(name, name);
        m["spec"]["credentialsSecretRef"]["name"] = json!("iam-login");
        w.create(m).await;
        w.wait_for(name, T, "Active", active_with_secret).await;
    }
    assert_eq!(w.sim.tokens_issued(), 1, "one token, cached and shared");

    w.sim.expire_all_tokens();
    w.delete("pw-1").await;
    w.wait_gone("pw-1", T).await;
    assert_eq!(w.sim.tokens_issued(), 2, "renewed at once on APIGW.0307");
    let rejected = w.sim.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(
        rejected, 1,
        "one call met the expired token; every later call used the renewed one"
    );
    assert!(
        !w.sim.session(PROJECT, "pw-1").unwrap().in_progress(),
        "pw-1 was cancelled"
    );

    // Tokens close to expiry are renewed before use.
    w.sim.set_token_lifetime(Duration::from_secs(30 * 60));
    w.sim.expire_all_tokens();
    w.delete("pw-2").await;
    w.wait_gone("pw-2", T).await;
    let issued = w.sim.tokens_issued();
    assert!(issued >= 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.create({
        let mut m = w.manifest("pw-3", "pw-3");
        m["spec"]["credentialsSecretRef"]["name"] = json!("iam-login");
        m
    })
    .await;
    w.wait_for("pw-3", T, "Active", active_with_secret).await;
    assert!(
        w.sim.tokens_issued() > issued,
        "a token with 30 minutes left is renewed before use"
    );
    w.stop_operator().await;
}
