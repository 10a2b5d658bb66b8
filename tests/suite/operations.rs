//! Running for months: health and metrics endpoints, leader election with failover, and a
//! graceful shutdown that finishes in-flight work and releases the lease. The operator runs as
//! its real binary.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use support::operator::CANCEL;
use support::operator::{PROJECT, World};
use support::process::OperatorProcess;
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const T: Duration = Duration::from_secs(30);

fn active(ra: &RemoteAssistance) -> bool {
    ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
}

fn operator(w: &World, instance: &str, extra: &[&str]) -> OperatorProcess {
    let cp = support::control_plane::shared();
    let mut args = vec![
        "--namespace",
        &w.namespace,
        "--leader-election-namespace",
        &w.namespace,
        "--instance-name",
        instance,
        "--poll-interval",
        "1h",
    ];
    let endpoint = w.sim.endpoint();
    args.extend_from_slice(&["--allowed-endpoint", &endpoint]);
    args.extend_from_slice(extra);
    OperatorProcess::spawn(&cp.kubeconfig, &args)
}

async fn lease_holder(w: &World) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), &w.namespace);
    leases
        .get_opt("workspace-assist")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_for_holder(w: &World, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(h) = lease_holder(w).await
            && check(&h)
        {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no expected lease holder within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two operators with a 4 s lease: (leader's name, leader, standby, standby's name), once the
/// standby is ready.
async fn leader_and_standby(w: &World) -> (String, OperatorProcess, OperatorProcess, &'static str) {
    let lease = ["--lease-duration", "4s", "--lease-renew-before", "1s"];
    let a = operator(w, "op-a", &lease);
    let b = operator(w, "op-b", &lease);
    let leader = wait_for_holder(w, T, |_| true).await;
    let (leading, standby, standby_name) = if leader == "op-a" {
        (a, b, "op-b")
    } else {
        (b, a, "op-a")
    };
    standby.wait_http("/readyz", 200, T).await;
    (leader, leading, standby, standby_name)
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let w = World::new("ops").await;
    w.sim.open_session(PROJECT, "desk-m");
    let op = operator(&w, "solo", &["--log-format", "json"]);
    op.wait_http("/readyz", 200, T).await;
    assert_eq!(op.get("/healthz").await.0, 200);
    wait_for_holder(&w, T, |h| h == "solo").await;

    w.create(w.manifest("ra", "desk-m")).await;
    w.wait_for("ra", T, "Active", active).await;
    // The per-phase gauges come from the housekeeping round (every 5 s), which must run.
    support::operator::eventually(Duration::from_secs(20), "the Active gauge at 1", || async {
        op.get("/metrics")
            .await
            .1
            .contains(r#"workspace_assist_resources{phase="Active"} 1"#)
    })
    .await;
    w.delete("ra").await;
    w.wait_gone("ra", T).await;

    let (status, text) = op.get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"workspace_assist_cloud_requests_total{operation="CancelRemoteAssistance",http_status="204",error_code=""} 1"#,
        r#"workspace_assist_cloud_requests_total{operation="ShowDesktopRemoteAssistanceInfo",http_status="200",error_code=""}"#,
        r#"workspace_assist_reconciles_total{result="success",reason="Reconciled"}"#,
        "workspace_assist_reconcile_duration_seconds_bucket",
        "workspace_assist_cloud_request_duration_seconds_bucket",
        "workspace_assist_leader 1",
        "workspace_assist_resources_stuck_deleting 0",
        "workspace_assist_resources_past_deadline 0",
        r#"workspace_assist_cancels_total{cause="deletion"} 1"#,
    ] {
        assert!(text.contains(expected), "/metrics lacks {expected}:\n{text}");
    }
    assert!(
        !text.contains("desk-m") && !text.contains(&w.namespace),
        "no names or IDs in metrics"
    );
    assert_eq!(op.get("/nope").await.0, 404);

    // JSON logs: every line an object; lines about a cloud call name the resource and the
    // cloud's request ID.
    let logs = op.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let cancelled = lines
        .iter()
        .find(|l| l["message"] == "remote assistance cancelled")
        .expect("a log line about the cancel");
    assert_eq!(
        cancelled["span"]["namespace"],
        w.namespace.as_str(),
        "{cancelled}"
    );
    assert_eq!(cancelled["span"]["resource"], "ra", "{cancelled}");
    assert_eq!(
        cancelled["request_id"].as_str().map(str::len),
        Some(32),
        "{cancelled}"
    );
}

#[tokio::test]
async fn one_leader_acts_and_a_standby_takes_over_when_it_is_killed() {
    let w = World::new("ops").await;
    let (leader, mut leading, standby, standby_name) = leader_and_standby(&w).await;

    let names: Vec<String> = (0..5).map(|i| format!("ha-{i}")).collect();
    for n in &names {
        w.sim.open_session(PROJECT, n);
        w.create(w.manifest(n, n)).await;
    }
    for n in &names {
        w.wait_for(n, T, "Active", active).await;
    }
    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.namespace);
    let reporters: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert!(!reporters.is_empty());
    assert!(
        reporters.iter().all(|r| *r == leader),
        "only the leader acts: {reporters:?}"
    );
    assert!(
        standby
            .get("/metrics")
            .await
            .1
            .contains("workspace_assist_leader 0")
    );
    // The simulator sees who calls (the instance is in the User-Agent).
    let calls_by = |instance: &str| {
        w.sim
            .requests()
            .iter()
            .filter(|r| r.user_agent.ends_with(&format!("({instance})")))
            .count()
    };
    assert!(
        calls_by(&leader) >= names.len(),
        "the leader's calls are recognised"
    );
    assert_eq!(calls_by(standby_name), 0, "the standby made no cloud call");

    leading.signal("-KILL");
    leading.wait(T).await;
    let killed = Instant::now();
    for n in &names {
        w.delete(n).await;
    }
    let new_leader = wait_for_holder(&w, Duration::from_secs(60), |h| h == standby_name).await;
    let takeover = killed.elapsed();
    for n in &names {
        w.wait_gone(n, T).await;
        assert_eq!(w.sim.count(CANCEL, n), 1, "{n}: cancelled exactly once");
    }
    assert_eq!(new_leader, standby_name);
    assert_eq!(
        calls_by(standby_name),
        names.len(),
        "the new leader made the cancels"
    );
    println!("takeover after SIGKILL of the leader (lease 4 s): {takeover:?}");
}

#[tokio::test]
async fn a_leader_killed_mid_drain_loses_no_cancel() {
    let w = World::new("ops").await;
    let (_, mut leading, standby, standby_name) = leader_and_standby(&w).await;
    let names: Vec<String> = (0..80).map(|i| format!("drain-{i}")).collect();
    for n in &names {
        w.create(w.manifest(n, n)).await;
    }
    for n in &names {
        w.wait_for(n, Duration::from_secs(60), "Active", active).await;
    }

    // A slow cloud makes the drain last a few seconds; the leader dies in the middle of it.
    w.sim.set_latency(Duration::from_millis(400));
    for n in &names {
        w.delete(n).await;
    }
    support::operator::eventually(T, "a tenth of the cancels confirmed", || async {
        w.sim.sent_cancels().len() >= names.len() / 10
    })
    .await;
    leading.signal("-KILL");
    leading.wait(T).await;
    let api = w.api();
    let left = futures::future::join_all(names.iter().map(|n| api.get_opt(n)))
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    assert!(
        left > 0 && left < names.len(),
        "the leader died mid-drain ({left} of {} left)",
        names.len()
    );

    wait_for_holder(&w, Duration::from_secs(20), |h| h == standby_name).await;
    for n in &names {
        w.wait_gone(n, Duration::from_secs(60)).await;
        let session = w.sim.session(PROJECT, n).unwrap();
        assert!(!session.in_progress(), "{n}: cancelled in the cloud");
    }
    let deletes: usize = names.iter().map(|n| w.sim.count(CANCEL, n)).sum();
    println!(
        "leader killed with {left} of {} resources left: {deletes} cloud DELETEs in all ({} duplicates)",
        names.len(),
        deletes - names.len()
    );
    // A killed leader's memory of confirmed cancels dies with it: the new leader sends again
    // at most the cancels that were in flight or confirmed-but-not-released when it died, one
    // per reconcile running then (--concurrency, 16 by default); each object at most twice.
    assert!(
        names.iter().all(|n| (1..=2).contains(&w.sim.count(CANCEL, n))),
        "each object one or two cancels"
    );
    assert!(
        deletes - names.len() <= 16,
        "{} duplicates, more than the reconciles in flight",
        deletes - names.len()
    );
    assert!(standby.logs().contains("became the leader"));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_releases_the_lease() {
    let w = World::new("ops").await;
    w.sim.open_session(PROJECT, "desk-slow");
    let mut op = operator(&w, "graceful", &[]);
    wait_for_holder(&w, T, |h| h == "graceful").await;
    w.create(w.manifest("ra", "desk-slow")).await;
    w.wait_for("ra", T, "Active", active).await;

    w.sim.inject(FaultRule::new(
        "desk-slow",
        CANCEL,
        vec![Fault::Delay(Duration::from_secs(3))],
    ));
    w.delete("ra").await;
    support::operator::eventually(T, "the cancel in flight", || async {
        w.sim.in_flight(CANCEL) == 1
    })
    .await;
    assert_eq!(
        w.sim.count(CANCEL, "desk-slow"),
        0,
        "the cancel has not completed yet"
    );
    let sent = Instant::now();
    op.signal("-TERM");
    let status = op.wait(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "clean exit after SIGTERM: {status}\n{}",
        op.logs()
    );
    println!("exited {:?} after SIGTERM", sent.elapsed());

    assert_eq!(
        w.sim.count(CANCEL, "desk-slow"),
        1,
        "the in-flight cancel completed"
    );
    assert!(
        w.api().get_opt("ra").await.unwrap().is_none(),
        "and its finalizer was removed before exit"
    );
    assert_eq!(lease_holder(&w).await, None, "the lease was released");
    assert!(op.logs().contains("leader Lease released"), "{}", op.logs());
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_acts() {
    let w = World::new("ops").await;
    let cp = support::control_plane::shared();
    let dir = tempfile::tempdir().unwrap();
    let proxy = support::proxy::Proxy::start(support::proxy::api_server_addr(&cp.kubeconfig)).await;
    let through = support::proxy::kubeconfig_through(&cp.kubeconfig, &proxy, dir.path());
    let args = |instance: &'static str| {
        vec![
            "--namespace".to_string(),
            w.namespace.clone(),
            "--leader-election-namespace".into(),
            w.namespace.clone(),
            "--instance-name".into(),
            instance.into(),
            "--lease-duration".into(),
            "4s".into(),
            "--lease-renew-before".into(),
            "1s".into(),
            // Open sessions are observed every second, from the cache: a leader cut off from
            // the API server would go on calling the cloud without the fence.
            "--poll-interval".into(),
            "1s".into(),
            "--allowed-endpoint".into(),
            w.sim.endpoint(),
        ]
    };
    let (a_args, b_args) = (args("op-a"), args("op-b"));
    let mut a = OperatorProcess::spawn(&through, &refs(&a_args));
    wait_for_holder(&w, T, |h| h == "op-a").await;
    let b = OperatorProcess::spawn(&cp.kubeconfig, &refs(&b_args));
    b.wait_http("/readyz", 200, T).await;

    let names: Vec<String> = (0..6).map(|i| format!("cut-{i}")).collect();
    for n in &names {
        w.create(w.manifest(n, n)).await;
    }
    for n in &names {
        w.wait_for(n, T, "Active", active).await;
    }
    let calls_by = |instance: &str| -> Vec<Instant> {
        w.sim
            .requests()
            .into_iter()
            .filter(|r| r.user_agent.ends_with(&format!("({instance})")))
            .map(|r| r.at)
            .collect()
    };
    support::operator::eventually(T, "the leader polling", || async {
        calls_by("op-a").len() > names.len() * 3
    })
    .await;

    // A slow cloud: the leader always has calls in flight. Then it loses the API server;
    // resources are deleted meanwhile (only the new leader can see that).
    let latency = Duration::from_millis(1500);
    w.sim.set_latency(latency);
    // And one desktop (kept) whose Shows take longer than a proof of leadership lasts (the
    // lease's 4 s less 1 s): the leader's Show of it is in flight at the cut, and still in
    // flight when the proof runs out, whatever the machine's load.
    let (slow, slower) = (&names[5], Duration::from_secs(8));
    w.sim.inject(FaultRule::new(
        slow,
        Operation::ShowDesktopRemoteAssistanceInfo,
        vec![Fault::Delay(slower); 100],
    ));
    support::operator::eventually(T, "the slow desktop's Show in flight", || async {
        w.sim
            .in_flight_on(Operation::ShowDesktopRemoteAssistanceInfo, slow)
            > 0
    })
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    let (deleted, kept) = names.split_at(3);
    for n in deleted {
        w.delete(n).await;
    }
    wait_for_holder(&w, Duration::from_secs(60), |h| h == "op-b").await;
    for n in deleted {
        w.wait_gone(n, T).await;
        assert!(
            !w.sim.session(PROJECT, n).unwrap().in_progress(),
            "{n}: cancelled by the new leader"
        );
    }
    for n in kept {
        assert!(
            w.sim.session(PROJECT, n).unwrap().in_progress(),
            "{n}: left alone"
        );
    }
    let status = a.wait(T).await;
    assert!(
        !status.success(),
        "the deposed leader exits to restart as a standby"
    );
    assert!(a.logs().contains("lost the leader Lease"), "{}", a.logs());

    let last_a = calls_by("op-a").into_iter().max().unwrap();
    let first_b = calls_by("op-b")
        .into_iter()
        .min()
        .expect("the new leader called the cloud");
    println!(
        "leader cut off: its last cloud call {:?} after the cut, the new leader's first {:?} after it",
        last_a.saturating_duration_since(cut_at),
        first_b.saturating_duration_since(cut_at)
    );
    assert!(
        last_a < first_b,
        "the deposed leader called the cloud after the new leader had started"
    );
    // Its calls whose answers would have come after the new leader's first call were cut off
    // when its proof of leadership ran out: none of those answers reached it.
    let late = calls_by("op-a")
        .into_iter()
        .filter(|at| *at + latency >= first_b)
        .count();
    let cut = a
        .logs()
        .matches("cut off: this instance can no longer prove it is the leader")
        .count();
    println!(
        "deposed leader: {late} calls whose answers would have come after the new leader's first call; {cut} cut off"
    );
    assert!(cut >= late, "{late} late answers, {cut} cut off:\n{}", a.logs());
    assert!(
        cut > 0,
        "the calls in flight at the cut were cut off:\n{}",
        a.logs()
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_deadline_across_a_leader_handover_cancels_exactly_once() {
    let w = World::new("ops").await;
    let (_, mut leading, _standby, standby_name) = leader_and_standby(&w).await;
    let mut m = w.manifest("boxed", "boxed");
    m["spec"]["maxDuration"] = serde_json::json!("5s");
    w.create(m).await;
    w.wait_for("boxed", T, "Active", active).await;
    // The leader dies before the deadline; the standby takes over around it.
    leading.signal("-KILL");
    leading.wait(T).await;
    wait_for_holder(&w, Duration::from_secs(60), |h| h == standby_name).await;
    let ra = w
        .wait_for("boxed", T, "Cancelled at its deadline", |ra| {
            ra.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(Phase::Cancelled) && s.deadline_exceeded_at.is_some())
        })
        .await;
    assert!(ra.status.unwrap().expires_at.is_none());
    assert_eq!(w.sim.count(CANCEL, "boxed"), 1, "cancelled exactly once");
    assert!(!w.sim.session(PROJECT, "boxed").unwrap().in_progress());
}

#[tokio::test]
async fn operators_on_disjoint_label_selectors_share_the_work_and_keep_their_own_leases() {
    let w = World::new("ops").await;
    let a = operator(
        &w,
        "op-a",
        &[
            "--watch-label-selector",
            "shard=a",
            "--leader-election-lease-name",
            "workspace-assist-a",
        ],
    );
    let b = operator(
        &w,
        "op-b",
        &[
            "--watch-label-selector",
            "shard=b",
            "--leader-election-lease-name",
            "workspace-assist-b",
        ],
    );
    let names = ["a-0", "a-1", "b-0", "b-1"];
    for n in names {
        let mut m = w.manifest(n, n);
        m["metadata"]["labels"] = serde_json::json!({ "shard": &n[..1] });
        w.create(m).await;
    }
    for n in names {
        w.wait_for(n, T, "Active", active).await;
    }
    // Each operator called the cloud for its own share only (the instance is in the User-Agent).
    for n in names {
        let callers: std::collections::HashSet<String> = w
            .sim
            .requests()
            .iter()
            .filter(|r| r.desktop_id == n)
            .map(|r| r.user_agent.clone())
            .collect();
        let owner = format!("(op-{})", &n[..1]);
        assert!(
            !callers.is_empty() && callers.iter().all(|ua| ua.ends_with(&owner)),
            "{n} is handled by {owner} only: {callers:?}"
        );
    }
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), &w.namespace);
    for (lease, holder) in [("workspace-assist-a", "op-a"), ("workspace-assist-b", "op-b")] {
        let spec = leases.get(lease).await.unwrap().spec.unwrap();
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(holder),
            "each keeps its own Lease"
        );
    }
    assert!(
        a.get("/metrics").await.1.contains("workspace_assist_leader 1")
            && b.get("/metrics").await.1.contains("workspace_assist_leader 1")
    );
    // Neither shard has the other's objects in its cache (so it can write nothing to them:
    // no finalizer, no status), as its own gauge counts them.
    for op in [&a, &b] {
        support::operator::eventually(T, "each shard counting its own two", || async {
            op.get("/metrics")
                .await
                .1
                .lines()
                .any(|l| l == "workspace_assist_resources{phase=\"Active\"} 2")
        })
        .await;
    }
    // Deleting is handled by the owner: exactly one cancel per object, from its own shard.
    for n in names {
        w.delete(n).await;
    }
    for n in names {
        w.wait_gone(n, T).await;
        let cancels: Vec<String> = w
            .sim
            .requests()
            .iter()
            .filter(|r| r.desktop_id == n && r.operation == Some(CANCEL))
            .map(|r| r.user_agent.clone())
            .collect();
        let owner = format!("(op-{})", &n[..1]);
        assert!(
            cancels.len() == 1 && cancels[0].ends_with(&owner),
            "{n}: one cancel, by {owner}: {cancels:?}"
        );
        assert!(
            !w.sim.session(PROJECT, n).unwrap().in_progress(),
            "{n}: its session is closed"
        );
    }
    // Every Event about an object came from its own shard.
    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.namespace);
    let events = events.list(&ListParams::default()).await.unwrap().items;
    for n in names {
        let owner = format!("op-{}", &n[..1]);
        let about: Vec<_> = events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(n))
            .collect();
        assert!(!about.is_empty(), "{n}: Events were published");
        for e in about {
            assert_eq!(
                e.reporting_instance.as_deref(),
                Some(owner.as_str()),
                "{n}: an Event from the other shard: {:?}",
                e.reason
            );
        }
    }
}

#[tokio::test]
async fn a_label_selector_the_api_server_refuses_stops_the_operator_with_its_reason() {
    let w = World::new("ops").await;
    let mut op = operator(
        &w,
        "bad-selector",
        &["--watch-label-selector", "shard in a,b", "--leader-elect=false"],
    );
    let status = op.wait(T).await;
    assert!(!status.success());
    assert!(op.logs().contains("--watch-label-selector"), "{}", op.logs());
}
