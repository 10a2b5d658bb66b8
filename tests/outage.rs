//! API server outage: the control plane stops for 30 s in the middle of a run, with cancels on
//! their way to the cloud, and starts again on the same data (same address, certificate and
//! token). The operator, its real binary (one instance, no leader election), is not restarted:
//! it recovers on its own and completes the work, and no cancel is lost.

mod support;

use std::time::{Duration, Instant};

use support::control_plane::{ControlPlane, harness};
use support::operator::CANCEL;
use support::operator::{PROJECT, World};
use support::process::{OperatorProcess, free_port};
use workspace_assist::resource::{Phase, RemoteAssistance};

const OUTAGE: Duration = Duration::from_secs(30);
/// How long the test waits for the work to complete before it calls the operator stuck: a
/// guard against a hang, not a performance bound (the recovery time is printed; it is usually
/// about 14 s).
const RECOVERY: Duration = Duration::from_secs(300);

fn phase_is(phase: Phase) -> impl Fn(&RemoteAssistance) -> bool {
    move |ra| ra.status.as_ref().and_then(|s| s.phase) == Some(phase)
}

#[tokio::test]
async fn the_operator_recovers_from_a_30s_api_server_outage_without_a_restart() {
    outage(&[]).await;
}

/// The same with plain lists. By default the watches relist with a streaming list, whose
/// objects arrive before the store holds them (a spec change made then was once read in its
/// older version and never acted on; see `controller/watches/after_lists.rs`); a plain list too leaves
/// a gap between its objects and the store.
#[tokio::test]
async fn the_operator_recovers_from_an_outage_with_plain_lists() {
    outage(&["--streaming-lists", "false"]).await;
}

/// Runs the outage scenario with the operator started with `extra_args` too.
async fn outage(extra_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let args = ["-port", port.as_str(), "-keep-data"];
    let cp = ControlPlane::start_in(&harness(), dir.path(), &args).unwrap_or_else(|e| panic!("{e:#}"));
    let mut w = World::on(support::client_for(&cp).await, "outage").await;
    let ns = w.namespace.clone();
    // One instance without leader election: a leader that cannot renew its Lease for the renew
    // deadline stops and exits by design (tests/suite/operations.rs cuts a leader off); this test is
    // about the watches and the work recovering in the same process.
    let endpoint = w.sim.endpoint();
    let mut operator_args = vec![
        "--namespace",
        &ns,
        "--leader-elect",
        "false",
        "--poll-interval",
        "1h",
        "--allowed-endpoint",
        &endpoint,
    ];
    operator_args.extend_from_slice(extra_args);
    let mut operator = OperatorProcess::spawn(&cp.kubeconfig, &operator_args);

    let names: Vec<String> = (0..12).map(|i| format!("out-{i}")).collect();
    for n in &names {
        w.create(w.manifest(n, n)).await;
    }
    for n in &names {
        w.wait_for(n, Duration::from_secs(60), "Active", phase_is(Phase::Active))
            .await;
    }

    // Cancels are slow in the cloud: the control plane goes away while they are on their way, so
    // the cloud confirms them when the finalizers cannot be removed.
    w.sim.set_latency(Duration::from_secs(2));
    let (deleted, kept) = names.split_at(6);
    for n in deleted {
        w.delete(n).await;
    }
    support::operator::eventually(Duration::from_secs(30), "cancels on their way", || async {
        w.sim.in_flight(CANCEL) >= 1
    })
    .await;
    let stop_started = std::time::SystemTime::now();
    let stopped = tokio::task::spawn_blocking(move || {
        cp.stop();
        cp
    })
    .await
    .unwrap();
    let outage_started = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    w.sim.set_latency(Duration::ZERO);
    assert!(
        operator.running(),
        "the operator kept running through the outage; logs:\n{}",
        operator.logs()
    );

    let cp = ControlPlane::start_in(&harness(), dir.path(), &args).unwrap_or_else(|e| panic!("{e:#}"));
    let restarted = Instant::now();
    drop(stopped);
    // A new client (the old one's connections are gone); same kubeconfig contents.
    w.client = support::client_for(&cp).await;
    for n in &kept[..3] {
        w.patch_spec(n, serde_json::json!({ "cancelled": true }))
            .await
            .unwrap();
    }
    // The work completes once the control plane is back (a watch left unpolled while backing
    // off once made it take 80-100 s instead of about 14).
    for n in deleted {
        w.wait_gone(n, RECOVERY).await;
    }
    for n in &kept[..3] {
        w.wait_for(n, RECOVERY, "Cancelled", phase_is(Phase::Cancelled))
            .await;
    }
    let recovered = restarted.elapsed();
    for n in deleted.iter().chain(&kept[..3]) {
        assert!(
            !w.sim.session(PROJECT, n).unwrap().in_progress(),
            "{n}: cancelled in the cloud"
        );
        // A cancel the cloud confirmed while the API server was away is remembered (Recall):
        // never sent again.
        assert_eq!(w.sim.count(CANCEL, n), 1, "{n}: exactly one cancel");
    }
    for n in &kept[3..] {
        assert_eq!(w.sim.count(CANCEL, n), 0, "{n}: left alone");
        assert!(w.sim.session(PROJECT, n).unwrap().in_progress());
    }
    assert!(
        operator.running(),
        "the operator was never restarted; logs:\n{}",
        operator.logs()
    );
    let straddling = w
        .sim
        .sent_cancels()
        .iter()
        .filter(|c| c.received_at < stop_started && c.sent_at > stop_started)
        .count();
    assert!(
        straddling >= 1,
        "cancels were in flight when the control plane stopped"
    );
    let cancels: usize = deleted
        .iter()
        .chain(&kept[..3])
        .map(|n| w.sim.count(CANCEL, n))
        .sum();
    println!(
        "outage {:?} ({extra_args:?}); work completed {recovered:?} after the control plane was back; {cancels} cloud DELETEs for 9 cancels",
        restarted.duration_since(outage_started)
    );
    operator.signal("-TERM");
    let status = operator.wait(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "a clean exit after SIGTERM: {status}\n{}",
        operator.logs()
    );
    w.stop_operator().await;
    tokio::task::spawn_blocking(move || cp.stop()).await.unwrap();
}
