//! Operator crashes: the operator, its real binary, is SIGKILLed at random moments while
//! resources are created, cancelled and deleted, and restarted each time. At the end every
//! deleted resource is gone, every session that was asked to end is cancelled in the cloud, no
//! finalizer came off before the cloud confirmed the cancel, nothing is stuck; and the figures
//! (duplicate cloud DELETEs per kill, busiest second per resource) are printed.
//!
//! The test command runs a short version. The soak:
//!
//!     SOAK_RESOURCES=1000 SOAK_KILLS=20 cargo test --release --test crash_soak -- --nocapture
//!
//! A share of the cloud calls fails at random all along (`SOAK_FAULT_RATE`, default 0.1).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::watcher;
use rand::Rng;
use support::operator::CANCEL;
use support::operator::{PROJECT, World, assorted_cloud_faults, busiest_second_per_desktop};
use support::process::OperatorProcess;
use workspace_assist::resource::{Phase, RemoteAssistance};

/// Reconciles at once in the operator under test: a kill can lose the answers of at most this
/// many cloud calls in flight, which bounds the duplicate DELETEs per kill.
const CONCURRENCY: usize = 4;

/// Cloud calls one resource may get within one second: a reconcile makes at most three (Show,
/// Create, Show; or Show then Cancel), a retry comes at least half a second after a failure,
/// and a restarted operator reconciles at once: a reconcile, a retry and a restart's.
const MAX_CALLS_PER_RESOURCE_SECOND: usize = 9;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the workload does to resource `i`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    /// Deleted while the kills go on.
    Deleted,
    /// Cancelled through its spec, then deleted at the end.
    Cancelled,
    /// Left Active, then deleted at the end.
    Drained,
}

fn fate(i: usize) -> Fate {
    match i % 3 {
        0 => Fate::Deleted,
        1 => Fate::Cancelled,
        _ => Fate::Drained,
    }
}

/// Restarts the operator after each SIGKILL, `kills` times at random moments, then leaves one
/// running. Returns it.
async fn kill_repeatedly(
    ns: String,
    endpoint: String,
    kills: usize,
    killed: Arc<Mutex<usize>>,
    logs: Arc<Mutex<String>>,
) -> OperatorProcess {
    let kubeconfig = support::control_plane::shared().kubeconfig.clone();
    let spawn = || {
        OperatorProcess::spawn(
            &kubeconfig,
            &[
                "--namespace",
                &ns,
                "--leader-elect",
                "false",
                "--poll-interval",
                "1h",
                "--log-level",
                "info",
                "--concurrency",
                &CONCURRENCY.to_string(),
                "--allowed-endpoint",
                &endpoint,
                // Some injected faults need a person (an error delivered with HTTP 200): recheck soon.
                "--needs-human-recheck",
                "2s",
            ],
        )
    };
    let mut operator = spawn();
    for _ in 0..kills {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        assert!(
            operator.running(),
            "the operator died on its own; logs:\n{}",
            operator.logs()
        );
        operator.signal("-KILL");
        operator.wait(Duration::from_secs(10)).await;
        assert!(
            !operator.logs().contains("panicked"),
            "the operator panicked; logs:\n{}",
            operator.logs()
        );
        logs.lock().unwrap().push_str(&operator.logs());
        *killed.lock().unwrap() += 1;
        operator = spawn();
    }
    operator
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_at_random_moments_lose_no_cancel() {
    let n = setting("SOAK_RESOURCES", 90);
    let kills = setting("SOAK_KILLS", 6);
    let fault_rate = setting("SOAK_FAULT_RATE", 0.1);
    let w = World::new("crash").await;
    w.sim.set_random_faults(fault_rate, assorted_cloud_faults());
    let api = w.api();

    // When each resource disappeared, as the apiserver's watch reports it (wall clock, as the
    // simulator records when it sent each answer).
    let gone: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let seen = gone.clone();
    let deletions = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Delete(ra)) = event {
                seen.lock().unwrap().insert(ra.name_any(), SystemTime::now());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Arc::new(Mutex::new(0));
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("c-{i}")).collect();
    let logs = Arc::new(Mutex::new(String::new()));
    let killer = tokio::spawn(kill_repeatedly(
        w.namespace.clone(),
        w.sim.endpoint(),
        kills,
        killed.clone(),
        logs.clone(),
    ));

    // The workload, paced so that it spans the kills: create in batches; cancel and delete
    // while resources are still being created and started.
    let batch = (n / 10).max(1);
    for (b, chunk) in names.chunks(batch).enumerate() {
        for name in chunk {
            w.create(w.manifest(name, name)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if b >= 2 {
            for (i, name) in names
                .iter()
                .enumerate()
                .take((b - 1) * batch)
                .skip((b - 2) * batch)
            {
                match fate(i) {
                    Fate::Deleted => w.delete(name).await,
                    Fate::Cancelled => {
                        w.patch_spec(name, serde_json::json!({ "cancelled": true }))
                            .await
                            .unwrap();
                    }
                    Fate::Drained => {}
                }
            }
        }
    }
    for (i, name) in names
        .iter()
        .enumerate()
        .skip(names.len().saturating_sub(2 * batch))
    {
        match fate(i) {
            Fate::Deleted => w.delete(name).await,
            Fate::Cancelled => {
                w.patch_spec(name, serde_json::json!({ "cancelled": true }))
                    .await
                    .unwrap();
            }
            Fate::Drained => {}
        }
    }
    let mut operator = killer.await.unwrap();
    let kills_done = *killed.lock().unwrap();

    // Cancelled ones reach Cancelled; then everything still there is deleted (a drain).
    let statuses: Mutex<Vec<serde_json::Value>> = Mutex::default();
    for (i, name) in names.iter().enumerate() {
        if fate(i) == Fate::Cancelled {
            let ra = w
                .wait_for(
                    name,
                    Duration::from_secs(120),
                    "Cancelled",
                    |ra: &RemoteAssistance| {
                        ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled)
                    },
                )
                .await;
            statuses
                .lock()
                .unwrap()
                .push(serde_json::to_value(&ra.status).unwrap());
        }
    }
    for ra in w.api().list(&Default::default()).await.unwrap() {
        statuses
            .lock()
            .unwrap()
            .push(serde_json::to_value(&ra.status).unwrap());
    }
    for (i, name) in names.iter().enumerate() {
        if fate(i) != Fate::Deleted {
            w.delete(name).await;
        }
    }
    for name in &names {
        w.wait_gone(name, Duration::from_secs(120)).await;
    }
    let converged = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    deletions.abort();
    assert!(operator.running());
    assert!(!operator.logs().contains("panicked"));

    // The cloud's view. Each resource went only after the cloud sent a confirmation: a 204, or
    // a Workspace 404 (nothing to cancel: never started, or its cancel's reply was lost).
    let requests = w.sim.requests();
    let sent = w.sim.sent_cancels();
    let gone = gone.lock().unwrap().clone();
    let mut sessions = 0;
    for name in &names {
        let gone_at = gone
            .get(name)
            .unwrap_or_else(|| panic!("{name}: its deletion was not seen"));
        if !requests.iter().any(|r| r.desktop_id == *name) {
            // Deleted before the operator held it (its finalizer comes before any cloud call).
            continue;
        }
        let confirmed = sent
            .iter()
            .filter(|c| c.desktop_id == *name)
            .map(|c| c.sent_at)
            .min();
        let confirmed =
            confirmed.unwrap_or_else(|| panic!("{name}: went without a confirmation from the cloud"));
        assert!(
            confirmed <= *gone_at,
            "{name}: the finalizer came off before the cloud sent its confirmation"
        );
        if let Some(session) = w.sim.session(PROJECT, name) {
            sessions += 1;
            assert!(
                !session.in_progress(),
                "{name}: its session is still open in the cloud"
            );
        }
    }

    // No secret value in what the operators logged, the Events or the statuses they wrote.
    let logs = format!("{}{}", logs.lock().unwrap(), operator.logs());
    assert!(
        logs.contains("remote assistance cancelled"),
        "the operators' logs were collected"
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(w.client.clone(), &w.namespace);
    let events = serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    let statuses = serde_json::to_string(&statuses.lock().unwrap().clone()).unwrap();
    let metrics = operator.get("/metrics").await.1;
    assert!(
        metrics.contains("workspace_assist_cloud_requests_total"),
        "/metrics was read"
    );
    // Every session's secrets, also those of sessions a later one replaced on its desktop.
    let mut secrets = vec![support::operator::SK.to_string()];
    secrets.extend(support::session_secrets(&w.sim));
    for (what, text) in [
        ("logs", &logs),
        ("Events", &events),
        ("statuses", &statuses),
        ("metrics", &metrics),
    ] {
        assert_eq!(
            support::leaked(text, &secrets),
            None,
            "a secret value appears in the {what}"
        );
        assert!(
            !text.contains("share.example.com/s/") && !text.contains("share.example.internal/s/"),
            "a share link appears in the {what}"
        );
    }

    // Figures.
    let faults = requests.iter().filter(|r| r.faulted).count();
    let confirmed = requests
        .iter()
        .filter(|r| r.operation == Some(CANCEL) && r.status == 204 && !r.faulted)
        .count();
    // A DELETE that met an injected fault is a retry, not a duplicate.
    let deletes = requests
        .iter()
        .filter(|r| r.operation == Some(CANCEL) && !r.faulted)
        .count();
    let cancelled_desktops = names
        .iter()
        .filter(|n| {
            requests
                .iter()
                .any(|r| r.desktop_id == **n && r.operation == Some(CANCEL))
        })
        .count();
    let duplicates = deletes.saturating_sub(cancelled_desktops);
    let busiest = busiest_second_per_desktop(&requests);
    println!(
        "crash soak: {n} resources, {sessions} sessions started, {kills_done} SIGKILLs, {faults} of {} cloud calls faulted \
         ({:.0}%), converged in {converged:.1?}; {confirmed} cancels confirmed (204); {deletes} unfaulted cloud DELETEs for \
         {cancelled_desktops} resources: {duplicates} duplicates ({:.2} per kill); at most {} cloud calls per \
         resource in one second",
        requests.len(),
        fault_rate * 100.0,
        duplicates as f64 / kills_done.max(1) as f64,
        busiest.count()
    );
    assert_eq!(kills_done, kills);
    assert!(
        duplicates <= CONCURRENCY * kills_done,
        "{duplicates} duplicate DELETEs for {kills_done} kills at concurrency {CONCURRENCY}"
    );
    assert!(
        busiest.count() <= MAX_CALLS_PER_RESOURCE_SECOND,
        "hot loop: {busiest}"
    );
    operator.signal("-TERM");
    let status = operator.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "a clean exit after SIGTERM: {status}");
}
