//! One operator for every namespace, on the real control plane: a noisy namespace cannot delay
//! another's cancels (access-ending work first), nor take more than its share of the cloud
//! budget (namespaces in turn); churn is paced by the gate; what a namespace puts in metadata
//! does not reach the operator's memory; breaker entries of wrong keys age out; a Secret created
//! after its resource re-drives it. Every check counts or orders what the simulator saw.

use crate::support;

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::operator::{AK, CANCEL, CREATE, PROJECT, SECRET, SK, World, condition_reason, eventually};
use workspace_assist::controller::{self, Telemetry};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};

const T: Duration = Duration::from_secs(90);

/// Two namespaces, N (noisy: the World's) and Q (quiet), and an operator for all namespaces
/// that reconciles only this test's resources (by a label, as a shard would).
struct Tenants {
    w: World,
    quiet: String,
    label: String,
}

impl Tenants {
    async fn new(prefix: &str) -> Tenants {
        let w = World::new(prefix).await;
        let quiet = support::fresh_namespace(&w.client, &format!("{prefix}-q")).await;
        w.put_secret_in(&quiet).await;
        let label = w.namespace.clone();
        Tenants { w, quiet, label }
    }

    fn config(&self) -> controller::Config {
        controller::Config {
            namespace: None,
            label_selector: Some(format!("tenants-run={}", self.label)),
            ..self.w.config()
        }
    }

    fn manifest(&self, namespace: &str, name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "workspace.assist.dev/v1alpha1",
            "kind": "RemoteAssistance",
            "metadata": { "name": name, "namespace": namespace, "labels": { "tenants-run": self.label } },
            "spec": {
                "projectId": PROJECT,
                "desktopId": name,
                "endpoint": self.w.sim.endpoint(),
                "credentialsSecretRef": { "name": SECRET },
            }
        })
    }

    fn api(&self, namespace: &str) -> Api<RemoteAssistance> {
        Api::namespaced(self.w.client.clone(), namespace)
    }

    async fn create(&self, namespace: &str, names: &[String]) {
        for name in names {
            let ra: RemoteAssistance = serde_json::from_value(self.manifest(namespace, name)).unwrap();
            self.api(namespace)
                .create(&PostParams::default(), &ra)
                .await
                .expect("creating a RemoteAssistance");
        }
    }

    async fn wait_active(&self, namespace: &str, names: &[String]) {
        let api = self.api(namespace);
        eventually(T, "all Active", || async {
            let list = api.list(&Default::default()).await.unwrap();
            names.iter().all(|n| {
                list.items.iter().any(|ra| {
                    ra.metadata.name.as_ref() == Some(n)
                        && ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
                })
            })
        })
        .await;
    }

    /// The desktops of the simulator's requests of `operation`, in the order they arrived.
    fn desktops(&self, operation: workspace_assist::workspace::Operation) -> Vec<String> {
        self.w
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.operation == Some(operation) && r.status != 0)
            .map(|r| r.desktop_id)
            .collect()
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn cancels_go_ahead_of_a_noisy_namespaces_creates() {
    let mut t = Tenants::new("tenants-prio").await;
    let mut config = t.config();
    config.concurrency = 2;
    config.cloud_rate_limit = std::num::NonZeroU32::new(5).unwrap();
    config.poll_interval = Duration::from_secs(3600);
    t.w.start_operator(config);
    let quiet = names("q", 4);
    t.create(&t.quiet, &quiet).await;
    t.wait_active(&t.quiet, &quiet).await;

    // N asks for 40 sessions at once: at 5 calls/s (a Show and a Create each), 16 s of work.
    let noisy = names("n", 40);
    t.create(&t.w.namespace, &noisy).await;
    let noisy_creates = || t.desktops(CREATE).iter().filter(|d| d.starts_with("n-")).count();
    eventually(T, "N's creates under way", || async { noisy_creates() >= 3 }).await;

    // Q deletes its four while N's queue is full.
    let before = noisy_creates();
    for name in &quiet {
        t.api(&t.quiet)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(T, "Q's resources gone", || async {
        t.api(&t.quiet)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    let overtaken = noisy_creates() - before;
    let cancels: Vec<String> = t.desktops(CANCEL);
    assert_eq!(cancels.len(), 4, "one cancel each: {cancels:?}");
    // What was already under way when the deletions came (two slots, a call each) may finish
    // first; nothing queued after it may.
    assert!(
        overtaken <= 4,
        "{overtaken} of N's creates went before Q's cancels (of {} still queued)",
        noisy.len() - before
    );
    t.w.stop_operator().await;
}

#[tokio::test]
async fn namespaces_take_turns_for_the_cloud_budget() {
    let mut t = Tenants::new("tenants-fair").await;
    let mut config = t.config();
    // Enough reconcile slots for every object: what is measured is the cloud budget's order
    // (with fewer, the calls of reconciles already in their slots go first).
    config.concurrency = 64;
    config.cloud_rate_limit = std::num::NonZeroU32::new(5).unwrap();
    config.poll_interval = Duration::from_secs(3600);
    t.w.start_operator(config);
    let noisy = names("n", 40);
    t.create(&t.w.namespace, &noisy).await;
    let creates = || t.desktops(CREATE);
    eventually(T, "N's creates under way", || async {
        creates().iter().filter(|d| d.starts_with("n-")).count() >= 3
    })
    .await;
    let quiet = names("q", 6);
    let before = creates().len();
    t.create(&t.quiet, &quiet).await;
    t.wait_active(&t.quiet, &quiet).await;
    let after: Vec<String> = creates()[before..].to_vec();
    let last_quiet = after.iter().rposition(|d| d.starts_with("q-")).unwrap();
    let noisy_meanwhile = after[..last_quiet].iter().filter(|d| d.starts_with("n-")).count();
    // In turn, Q's six sessions (a Show and a Create each) share the budget half and half with
    // N's calls; first come first served, they would wait for N's 37 others.
    assert!(
        noisy_meanwhile <= 12,
        "{noisy_meanwhile} of N's creates went before Q's six: {after:?}"
    );
    t.w.stop_operator().await;
}

#[tokio::test]
async fn churn_gets_the_calls_its_gate_allows() {
    let mut w = World::new("tenants-churn").await;
    // Every Create for this desktop is refused (a person must act): Stalled.
    let refused = Fault::Error {
        status: 403,
        code: "WKS.00010002".into(),
        message: "not allowed".into(),
        detail: None,
        encoded_authorization_message: None,
    };
    w.sim.inject(FaultRule::new("churn", CREATE, vec![refused; 200]));
    let config = w.config();
    let base = config.backoff.base;
    w.start_operator(config);
    w.create(w.manifest("churn", "churn")).await;
    w.wait_for("churn", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").is_some()
    })
    .await;
    // A bot rewrites the retry annotation every 100 ms for 6 s.
    let started = Instant::now();
    for i in 0..60 {
        w.annotate("churn", json!({ "workspace.assist.dev/retry": i.to_string() }))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let creates = w.sim.count(CREATE, "churn");
    // The first attempt, the first change at once, then changes spaced base, 2 base, 4 base...
    let spaced = ((elapsed.as_secs_f64() / base.as_secs_f64()) + 1.0)
        .log2()
        .floor() as usize;
    let allowed = 2 + spaced + 1;
    assert!(creates >= 3, "changes still re-drive it: {creates} creates");
    assert!(
        creates <= allowed,
        "{creates} creates in {elapsed:?} of churn; the gate allows {allowed}"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn a_secret_created_after_its_resource_re_drives_it() {
    let mut w = World::new("tenants-late").await;
    w.start_operator(w.config());
    let mut manifest = w.manifest("late", "late");
    manifest["spec"]["credentialsSecretRef"]["name"] = json!("late-credentials");
    w.create(manifest).await;
    w.wait_for("late", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").is_some()
    })
    .await;
    // The slow recheck is 10 minutes: only the Secret's creation can wake it in time.
    w.put_secret(
        "late-credentials",
        &[("accessKeyId", AK), ("secretAccessKey", SK)],
    )
    .await;
    w.wait_for("late", Duration::from_secs(30), "Active", |ra| {
        support::operator::phase(ra) == Some(Phase::Active)
    })
    .await;
    w.stop_operator().await;
}

/// The untrusted entries of the per-credential breakers, from the operator's metrics.
fn untrusted(telemetry: &Telemetry) -> Option<u64> {
    telemetry
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("workspace_assist_credential_breakers{trust=\"untrusted\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn breaker_entries_of_wrong_keys_age_out() {
    let mut w = World::new("tenants-keys").await;
    let mut config = w.config();
    // Long enough that the gauge (reported every 5 s) sees the wrong keys before they age out.
    config.unauthenticated_pause = Duration::from_secs(20);
    let telemetry = Telemetry::default();
    w.start_operator_with(config, telemetry.clone());
    w.put_secret(SECRET, &[("accessKeyId", AK), ("secretAccessKey", "wrong-0")])
        .await;
    w.create(w.manifest("keys", "keys")).await;
    // Three wrong keys in a row, each refused once.
    for i in 1..=3 {
        let refusals = i;
        eventually(T, "the wrong key refused", || async {
            w.sim.requests().iter().filter(|r| r.status == 401).count() >= refusals
        })
        .await;
        w.put_secret(
            SECRET,
            &[("accessKeyId", AK), ("secretAccessKey", &format!("wrong-{i}"))],
        )
        .await;
    }
    eventually(T, "wrong keys tracked", || async {
        untrusted(&telemetry).is_some_and(|n| n >= 2)
    })
    .await;
    w.put_secret(SECRET, &[("accessKeyId", AK), ("secretAccessKey", SK)])
        .await;
    w.wait_for("keys", T, "Active", |ra| {
        support::operator::phase(ra) == Some(Phase::Active)
    })
    .await;
    // Unused for a lock window after theirs, the wrong keys are forgotten.
    eventually(T, "the wrong keys forgotten", || async {
        untrusted(&telemetry) == Some(0)
    })
    .await;
    w.stop_operator().await;
}

/// The resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

#[tokio::test]
async fn large_foreign_annotations_stay_out_of_the_operators_memory() {
    let w = World::new("tenants-memory").await;
    let cp = support::control_plane::shared();
    let endpoint = w.sim.endpoint();
    let op = support::process::OperatorProcess::spawn(
        &cp.kubeconfig,
        &[
            "--namespace",
            &w.namespace,
            "--leader-election-namespace",
            &w.namespace,
            "--allowed-endpoint",
            &endpoint,
            "--poll-interval",
            "1h",
        ],
    );
    op.wait_http("/readyz", 200, T).await;
    let base = rss_bytes(op.pid());
    // 120 resources with 250 KiB of someone else's annotations each: 30 MB in the API server.
    let notes = "n".repeat(250 * 1024);
    let all = names("big", 120);
    for name in &all {
        let mut manifest = w.manifest(name, name);
        manifest["metadata"]["annotations"] = json!({ "example.com/notes": notes });
        w.create(manifest).await;
    }
    for name in &all {
        w.wait_for(name, T, "Active", |ra| {
            support::operator::phase(ra) == Some(Phase::Active)
        })
        .await;
    }
    // The operator hands free pages back every 30 s; what it keeps is what its cache holds.
    let limit = base + 12 * 1024 * 1024;
    eventually(T, "the operator's memory back near its base", || async {
        rss_bytes(op.pid()) <= limit
    })
    .await;
}
