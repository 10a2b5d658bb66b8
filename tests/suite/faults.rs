//! Cloud faults and credential rotation: everything converges, no resource is retried in a hot
//! loop, status shows the last error while it lasts and clears after, and a rotated key is
//! picked up without a restart.

use crate::support;

use std::time::Duration;

use support::operator::{
    AK, PROJECT, SECRET, World, assorted_cloud_faults, attempts_within, busiest_second_per_desktop,
    quickest_retry_after_fault,
};
use workspace_assist::controller::BackoffPolicy;
use workspace_assist::resource::Phase;
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn thirty_percent_cloud_faults_converge_without_hot_loops() {
    let mut w = World::new("faults").await;
    let n = 40;
    w.sim.set_random_faults(0.3, assorted_cloud_faults());
    let mut config = w.config();
    config.client.timeout = Duration::from_secs(1);
    config.poll_interval = Duration::from_secs(3600);
    // The operator's own first retry (not the quick one of the other tests): the hot-loop bound
    // below is derived from it.
    config.backoff.base = BackoffPolicy::default().base;
    // Some faults need a person (an error delivered with HTTP 200): recheck them soon here.
    config.backoff.needs_human_recheck = Duration::from_secs(2);
    let config_backoff = config.backoff;
    w.start_operator(config);
    let names: Vec<String> = (0..n).map(|i| format!("f-{i}")).collect();
    for name in &names {
        w.create(w.manifest(name, name)).await;
    }
    let mut saw_error = false;
    for name in &names {
        let ra = w
            .wait_for(name, T, "Active", |ra| {
                ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
            })
            .await;
        assert!(
            ra.status.as_ref().unwrap().last_error.is_none(),
            "{name}: the error is cleared after a success"
        );
        saw_error |= w
            .sim
            .requests()
            .iter()
            .any(|r| r.desktop_id == *name && r.faulted);
    }
    assert!(saw_error, "faults were injected");
    for name in &names {
        w.delete(name).await;
    }
    for name in &names {
        w.wait_gone(name, T).await;
        let session = w.sim.session(PROJECT, name).expect("a session was created");
        assert!(!session.in_progress(), "{name}: cancelled in the cloud");
    }
    // Every session ended on a confirmation the cloud sent: among the faults, replies lost after
    // the cloud applied a cancel were followed by a "nothing to cancel" (a Workspace 404).
    let lost_replies = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.faulted && r.status == 0 && r.operation == Some(Operation::CancelRemoteAssistance))
        .count();
    let confirmations = w.sim.sent_cancels();
    for name in &names {
        assert!(
            confirmations.iter().any(|c| c.desktop_id == *name),
            "{name}: the finalizer came off without a confirmation from the cloud"
        );
    }
    println!(
        "{lost_replies} cancels met a dropped connection; {} answered 404 (nothing to cancel)",
        confirmations.iter().filter(|c| c.status == 404).count()
    );
    // No hot loop: per resource, at most a handful of calls in any second.
    let requests = w.sim.requests();
    let busiest = busiest_second_per_desktop(&requests);
    let faulted = requests.iter().filter(|r| r.faulted).count();
    println!(
        "{n} resources, {} cloud requests, {faulted} faulted; busiest second: {busiest}",
        requests.len()
    );
    // Per resource, a run of failed starts and then, after a success resets the backoff, a run of
    // failed cancels. A start makes at most three calls (Show, Create, then Show after a created
    // or refused Create), a cancel one (these sessions were never seen Closed); the runs' retries
    // come no sooner than the policy allows.
    // No retry sooner than the backoff allows: a failed attempt's first retry waits at least
    // the shortest first delay of the policy.
    let shortest = config_backoff
        .retry_delay(1, 0.0)
        .min(config_backoff.needs_human_recheck);
    let (gap, desktop, operation, status) =
        quickest_retry_after_fault(&requests).expect("faults were injected");
    println!("quickest retry after a fault: {gap:?} ({desktop}, after {operation:?} -> {status})");
    assert!(
        gap >= shortest,
        "{desktop} was called again {gap:?} after a fault ({operation:?} -> {status}), sooner than the backoff's {shortest:?}"
    );
    let attempts = attempts_within(&config_backoff, Duration::from_secs(1));
    let bound = attempts * 3 + attempts;
    assert!(
        busiest.count() <= bound,
        "hot loop: {busiest}\n(bound {bound}: {attempts} attempts a second under the backoff policy)"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let mut w = World::new("faults").await;
    w.start_operator(w.config());
    w.create(w.manifest("ra", "desk-rotate")).await;
    w.wait_for("ra", Duration::from_secs(20), "Active", |ra| {
        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await;

    // The old key stops working, and the deletion's cancel is refused with it: Stalled.
    w.sim.remove_access_key(AK);
    w.delete("ra").await;
    w.wait_for("ra", Duration::from_secs(20), "Stalled Unauthenticated", |ra| {
        ra.metadata.deletion_timestamp.is_some()
            && support::operator::condition_reason(ra, "Stalled").as_deref() == Some("Unauthenticated")
    })
    .await;
    // The Secret is updated with the new key: picked up at once, well inside the 5-minute hold
    // of the refused key and the 10-minute recheck of a failure that needs a person.
    w.sim.add_access_key("AKROTATED00000000002", "rotated-secret-key");
    w.put_secret(
        SECRET,
        &[
            ("accessKeyId", "AKROTATED00000000002"),
            ("secretAccessKey", "rotated-secret-key"),
        ],
    )
    .await;
    w.wait_gone("ra", Duration::from_secs(20)).await;
    assert!(!w.sim.session(PROJECT, "desk-rotate").unwrap().in_progress());
    let cancels: Vec<u16> = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation == Some(Operation::CancelRemoteAssistance))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        cancels,
        vec![401, 204],
        "one refused call with the old key, then the new key's cancel"
    );
    w.stop_operator().await;
}
