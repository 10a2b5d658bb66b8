//! Time-boxed access on the real control plane: a session is cancelled when its maximum
//! duration has passed (counted from the cloud's creation time), the deadline moves with the
//! spec, the operator's maximum caps it, it survives restarts and never fires on paused
//! resources; finished resources are deleted after their TTL without another cancel.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::operator::phase;
use support::operator::{PROJECT, World, condition_reason, eventually};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(30);

fn active(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Active)
}

fn cancelled_at_deadline(ra: &RemoteAssistance) -> bool {
    phase(ra) == Some(Phase::Cancelled)
        && condition_reason(ra, "Ready").as_deref() == Some("DeadlineExceeded")
}

fn expires_at(ra: &RemoteAssistance) -> jiff::Timestamp {
    ra.status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .expect("status.expiresAt while the session is open")
        .0
}

fn created(w: &World, desktop: &str) -> jiff::Timestamp {
    w.sim
        .session(PROJECT, desktop)
        .expect("a session")
        .create_time
        .parse()
        .unwrap()
}

fn boxed(w: &World, name: &str, max: &str) -> serde_json::Value {
    let mut m = w.manifest(name, name);
    m["spec"]["maxDuration"] = json!(max);
    m
}

#[tokio::test]
async fn a_session_is_cancelled_when_its_maximum_duration_has_passed() {
    let mut w = World::new("timebox").await;
    w.start_operator(w.config());
    w.create(boxed(&w, "short", "3s")).await;
    let ra = w.wait_for("short", T, "Active", active).await;
    assert_eq!(
        expires_at(&ra),
        created(&w, "short") + jiff::SignedDuration::from_secs(3),
        "counted from the cloud's create_time"
    );
    let deadline = expires_at(&ra);
    let ra = w
        .wait_for("short", T, "Cancelled at its deadline", cancelled_at_deadline)
        .await;
    let status = ra.status.unwrap();
    assert!(
        status
            .deadline_exceeded_at
            .as_ref()
            .is_some_and(|t| t.0 >= deadline),
        "not before its deadline: {:?} < {deadline}",
        status.deadline_exceeded_at
    );
    let cancel = w
        .sim
        .sent_cancels()
        .into_iter()
        .find(|c| c.desktop_id == "short")
        .expect("the cancel");
    assert!(
        jiff::Timestamp::try_from(cancel.received_at).unwrap() >= deadline,
        "the cancel reached the cloud no sooner than the deadline"
    );
    assert!(status.expires_at.is_none() && status.finished_at.is_some());
    assert!(
        !w.sim.session(PROJECT, "short").unwrap().in_progress(),
        "the cloud session is cancelled"
    );
    eventually(T, "an Event DeadlineExceeded", || async {
        w.event_reasons("short", Some("Normal"))
            .await
            .contains(&"DeadlineExceeded".to_string())
    })
    .await;
    assert!(
        w.secret("short-invitation").await.is_none(),
        "the session's secret parts are gone"
    );
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "short"), 1);

    // Finished: a later change does not start a new session (counted after several polls of
    // another resource at the same interval), and deleting it needs no second cancel.
    w.annotate("short", json!({ "workspace.assist.dev/retry": "1" }))
        .await;
    w.create(w.manifest("ticker", "ticker")).await;
    w.wait_for("ticker", T, "Active", active).await;
    let ticks = w.sim.count(Operation::ShowDesktopRemoteAssistanceInfo, "ticker");
    eventually(T, "four polls of the ticker", || async {
        w.sim.count(Operation::ShowDesktopRemoteAssistanceInfo, "ticker") >= ticks + 4
    })
    .await;
    assert_eq!(
        w.sim.count(Operation::CreateRemoteAssistance, "short"),
        1,
        "no new session for a finished object"
    );
    w.wait_for("short", T, "still Cancelled", cancelled_at_deadline)
        .await;
    w.delete("short").await;
    w.wait_gone("short", T).await;
    assert_eq!(
        w.sim.count(Operation::CreateRemoteAssistance, "short"),
        1,
        "no new session for a finished object"
    );
    assert_eq!(
        w.sim.count(Operation::CancelRemoteAssistance, "short"),
        1,
        "no second cancel on delete"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn changing_max_duration_moves_the_deadline_and_below_elapsed_cancels_at_once() {
    let mut w = World::new("timebox").await;
    w.start_operator(w.config());
    w.create(boxed(&w, "moved", "1h")).await;
    w.create(boxed(&w, "lowered", "1h")).await;
    let ra = w.wait_for("moved", T, "Active", active).await;
    let first = expires_at(&ra);
    w.wait_for("lowered", T, "Active", active).await;

    w.patch_spec("moved", json!({ "maxDuration": "2h" }))
        .await
        .unwrap();
    w.wait_for("moved", T, "a later deadline", |ra| {
        ra.status
            .as_ref()
            .and_then(|s| s.expires_at.as_ref())
            .is_some_and(|t| t.0 == first + jiff::SignedDuration::from_hours(1))
    })
    .await;

    // The session has been open for more than a second: lowering the maximum below that
    // cancels it at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.patch_spec("lowered", json!({ "maxDuration": "1s" }))
        .await
        .unwrap();
    w.wait_for("lowered", T, "Cancelled at its deadline", cancelled_at_deadline)
        .await;
    assert!(
        w.sim.session(PROJECT, "moved").unwrap().in_progress(),
        "the other session stays open"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn the_operators_maximum_caps_a_longer_request_and_says_so() {
    let mut w = World::new("timebox").await;
    let mut config = w.config();
    config.limits.max_duration = Some(Duration::from_secs(2 * 3600));
    config.limits.default_max_duration = Some(Duration::from_secs(3600));
    w.start_operator(config);
    w.create(boxed(&w, "greedy", "12h")).await;
    w.create(w.manifest("plain", "plain")).await;
    let ra = w.wait_for("greedy", T, "Active", active).await;
    assert_eq!(
        expires_at(&ra),
        created(&w, "greedy") + jiff::SignedDuration::from_hours(2)
    );
    let note = ra
        .status
        .as_ref()
        .unwrap()
        .max_duration_capped
        .clone()
        .expect("status says it was capped");
    assert_eq!(note, "12h asked for; capped to the operator's maximum 2h");
    eventually(T, "a Warning MaxDurationCapped", || async {
        w.event_reasons("greedy", Some("Warning"))
            .await
            .contains(&"MaxDurationCapped".to_string())
    })
    .await;
    let ra = w.wait_for("plain", T, "Active", active).await;
    assert_eq!(
        expires_at(&ra),
        created(&w, "plain") + jiff::SignedDuration::from_hours(1),
        "the operator's default"
    );
    assert!(ra.status.unwrap().max_duration_capped.is_none());
    w.stop_operator().await;
}

#[tokio::test]
async fn a_deadline_that_passed_while_no_operator_ran_is_acted_on_at_start() {
    let mut w = World::new("timebox").await;
    w.start_operator(w.config());
    w.create(boxed(&w, "overnight", "2s")).await;
    let ra = w.wait_for("overnight", T, "Active", active).await;
    w.stop_operator().await;
    // Nobody runs while the deadline passes.
    let wait = expires_at(&ra).duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default() + Duration::from_secs(1)).await;
    assert!(w.sim.session(PROJECT, "overnight").unwrap().in_progress());
    w.start_operator(w.config());
    w.wait_for("overnight", T, "Cancelled at its deadline", cancelled_at_deadline)
        .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn the_deadline_never_fires_on_a_paused_resource_and_does_on_an_adopted_session() {
    let mut w = World::new("timebox").await;
    let telemetry = workspace_assist::controller::Telemetry::default();
    w.start_operator_with(w.config(), telemetry.clone());
    let metric = |line: &str| telemetry.metrics.render().lines().any(|l| l == line);
    w.create(boxed(&w, "paused", "2s")).await;
    w.wait_for("paused", T, "Active", active).await;
    w.annotate("paused", json!({ "workspace.assist.dev/paused": "true" }))
        .await;
    w.wait_for("paused", T, "Paused", |ra| {
        condition_reason(ra, "Synced").as_deref() == Some("Paused")
    })
    .await;

    // A session the desktop's user started, observed only (initiate: false).
    w.sim.open_session(PROJECT, "adopted");
    let mut m = boxed(&w, "adopted", "2s");
    m["spec"]["initiate"] = json!(false);
    w.create(m).await;
    w.wait_for("adopted", T, "Cancelled at its deadline", cancelled_at_deadline)
        .await;
    assert_eq!(w.sim.count(Operation::CreateRemoteAssistance, "adopted"), 0);

    // By now the paused resource's deadline has long passed: still open.
    let ra = w
        .wait_for("paused", T, "still paused", |ra| {
            condition_reason(ra, "Synced").as_deref() == Some("Paused")
        })
        .await;
    assert!(expires_at(&ra) < jiff::Timestamp::now());
    assert!(
        w.sim.session(PROJECT, "paused").unwrap().in_progress(),
        "no cancel while paused"
    );
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "paused"), 0);
    // The gauge an alert watches: a session past its deadline, not cancelled.
    eventually(T, "the past-deadline gauge at 1", || async {
        metric("workspace_assist_resources_past_deadline 1")
    })
    .await;
    w.annotate("paused", json!({ "workspace.assist.dev/paused": null }))
        .await;
    w.wait_for(
        "paused",
        T,
        "Cancelled at its deadline once resumed",
        cancelled_at_deadline,
    )
    .await;
    assert!(
        metric("workspace_assist_cancels_total{cause=\"deadline\"} 2"),
        "{}",
        telemetry.metrics.render()
    );
    eventually(T, "the past-deadline gauge back at 0", || async {
        metric("workspace_assist_resources_past_deadline 0")
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn finished_resources_are_deleted_after_their_ttl_without_another_cancel() {
    let mut w = World::new("timebox").await;
    w.start_operator(w.config());
    // Cancelled by its spec, with a short TTL.
    let mut m = w.manifest("done", "done");
    m["spec"]["ttlAfterFinished"] = json!("2s");
    w.create(m).await;
    w.wait_for("done", T, "Active", active).await;
    w.patch_spec("done", json!({ "cancelled": true })).await.unwrap();
    let ra = w
        .wait_for("done", T, "Cancelled", |ra| {
            phase(ra) == Some(Phase::Cancelled) && ra.status.as_ref().is_some_and(|s| s.finished_at.is_some())
        })
        .await;
    let finished = ra.status.unwrap().finished_at.unwrap().0;
    w.wait_gone("done", T).await;
    assert!(
        jiff::Timestamp::now() >= finished + jiff::SignedDuration::from_secs(2),
        "not deleted before finishedAt + ttlAfterFinished"
    );
    assert_eq!(
        w.sim.count(Operation::CancelRemoteAssistance, "done"),
        1,
        "deleted without a second cancel"
    );

    // A long TTL shortened later counts from the same finish time: deleted at once.
    let mut m = w.manifest("long", "long");
    m["spec"]["ttlAfterFinished"] = json!("1h");
    m["spec"]["cancelled"] = json!(true);
    w.create(m).await;
    w.wait_for("long", T, "Cancelled", |ra| phase(ra) == Some(Phase::Cancelled))
        .await;
    w.patch_spec("long", json!({ "ttlAfterFinished": "1s" }))
        .await
        .unwrap();
    w.wait_gone("long", T).await;

    // Closed in the cloud by someone else: deleted after its TTL too, with no cancel call.
    let mut m = w.manifest("closed", "closed");
    m["spec"]["ttlAfterFinished"] = json!("1s");
    w.create(m).await;
    w.wait_for("closed", T, "Active", active).await;
    w.sim.set_session_status(PROJECT, "closed", "CLOSE");
    w.wait_gone("closed", T).await;
    assert_eq!(w.sim.count(Operation::CancelRemoteAssistance, "closed"), 0);
    eventually(T, "an Event Expired", || async {
        w.event_reasons("closed", Some("Normal"))
            .await
            .contains(&"Expired".to_string())
    })
    .await;
    w.stop_operator().await;
}

#[tokio::test]
async fn bad_durations_are_refused_by_the_api_server() {
    let w = World::new("timebox").await;
    for (field, bad) in [
        ("maxDuration", "1d"),
        ("maxDuration", "1.5h"),
        ("maxDuration", "-1h"),
        ("maxDuration", "h"),
        ("ttlAfterFinished", "1 h"),
        ("ttlAfterFinished", "soon"),
    ] {
        let mut m = w.manifest("bad", "bad");
        m["spec"][field] = json!(bad);
        let ra: RemoteAssistance = serde_json::from_value(m).unwrap();
        let refused = w
            .api()
            .create(&Default::default(), &ra)
            .await
            .expect_err(&format!("{field}: {bad:?} must be refused"));
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains(field)),
            "{field} {bad:?}: {refused}"
        );
    }
    let mut m = w.manifest("good", "good");
    m["spec"]["maxDuration"] = json!("1h30m");
    m["spec"]["ttlAfterFinished"] = json!("0s");
    w.create(m).await;
}
