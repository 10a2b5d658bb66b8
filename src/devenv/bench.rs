//! `workspace-assist bench`: how fast a deletion completes, how many the operator drains, and how
//! little memory it needs, measured on the real control plane and the simulator against a floor
//! measured in the same run (a minimal client doing only the necessary work).

use std::collections::HashMap;

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;

mod noisy;

use super::control_plane::{ControlPlane, Harness};
use crate::controller::report::events::{EventPublisher, EventType, Note};
use crate::resource::{Phase, RemoteAssistance};
use crate::simulator::Simulator;
use crate::workspace::{
    ClientOptions, Credentials, Operation, Sensitive, Target, WorkspaceClient, resolve_endpoint,
};

const PROJECT: &str = "0bec5db98280d2d02fd6c00c2de791ce";
const AK: &str = "AKBENCH0000000000001";
const SK: &str = "bench-secret-key";
const FLOOR_FINALIZER: &str = "bench.workspace.assist.dev/floor";
/// The finalizer of the controller-runtime baseline (tests/control-plane/cmd/baseline).
const BASELINE_FINALIZER: &str = "baseline.workspace.assist.dev/cancel";
/// How long after a burst of work memory counts as steady: past the operator's 30 s return of
/// free heap pages to the system.
const STEADY_AFTER: Duration = Duration::from_secs(35);
/// The latency on every cloud call in scenario 5's drains.
const CLOUD_LATENCY: Duration = Duration::from_millis(50);

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the control-plane harness is built.
    pub build_dir: PathBuf,
    /// The operator binary to measure (run as `BIN run ...`).
    pub operator: PathBuf,
    /// Sequential deletions for the latency scenario.
    pub latency_samples: usize,
    /// Resources for the drain and create scenarios (and the small memory point).
    pub resources: usize,
    /// Resources for the large memory point (0 skips it).
    pub large: usize,
    /// Resources for the cloud-latency scenario (0 skips it).
    pub latency_scenario_resources: usize,
    /// Measuring window of the idle scenario (zero skips it).
    pub idle_window: Duration,
    /// Reconciles (and floor workers) at once.
    pub concurrency: u16,
    /// How long the API server is away in the outage scenario (zero skips it).
    pub outage: Duration,
    /// Churning resources of the noisy namespace in scenario 9 (0 skips it).
    pub noisy_resources: usize,
    /// Deletions, and deadlines, of the quiet namespace in scenario 9.
    pub quiet_resources: usize,
    /// Bytes of foreign annotations on each noisy resource in scenario 9.
    pub noisy_annotation_bytes: usize,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario and measure.
    pub what: String,
    /// The operator's figure.
    pub operator: String,
    /// The floor's figure, when there is one.
    pub floor: String,
    /// operator / floor (or floor / operator for throughputs), when meaningful.
    pub ratio: String,
}

/// The controller-runtime baseline's run: its drain, the API requests per resource while it
/// took hold of the created resources, and its steady RSS while holding them.
struct BaselineRun {
    drained: Measured,
    holding: Requests,
    rss: u64,
}

/// One measured phase of many resources.
struct Measured {
    took: Duration,
    /// Cloud calls during the phase (for a drain: the DELETEs).
    calls: usize,
    /// API server requests per resource.
    api_requests: f64,
    /// The same, by verb and resource ("DELETE secrets").
    by_kind: Requests,
}

/// API server requests by "VERB resource[/subresource]".
pub type Requests = std::collections::BTreeMap<String, f64>;

/// The requests of `after` not in `before`, per resource (of `n`), leaving out what rounds to 0.
fn per_resource(before: &Requests, after: &Requests, n: usize) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / n as f64))
        .filter(|(_, v)| *v >= 0.005)
        .collect()
}

impl Measured {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.took.as_secs_f64()
    }

    fn create_figures(&self, n: usize) -> String {
        let (took, calls, api) = (
            self.took.as_secs_f64(),
            self.calls as f64 / n as f64,
            self.api_requests,
        );
        format!(
            "{:.0}/s ({took:.1}s; per resource {calls:.1} cloud calls, {api:.1} API requests)",
            self.rate(n)
        )
    }

    fn drain_figures(&self, n: usize) -> String {
        format!(
            "{:.0}/s ({:.1}s, {} DELETEs, {:.1} API requests each)",
            self.rate(n),
            self.took.as_secs_f64(),
            self.calls,
            self.api_requests
        )
    }

    /// The API requests per resource by verb and resource, largest first, the bench's own
    /// included (its create or delete of each object, on both sides).
    fn breakdown(&self) -> String {
        by_kind_text(&self.by_kind)
    }
}

/// The API server's requests so far by "VERB resource[/subresource]", from its own
/// `apiserver_request_total`.
pub async fn apiserver_requests(client: &Client) -> anyhow::Result<Requests> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await.map_err(e)?;
    let mut by_kind = Requests::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let (resource, subresource) = (label("resource"), label("subresource"));
        let what = if subresource.is_empty() {
            resource
        } else {
            format!("{resource}/{subresource}")
        };
        *by_kind.entry(format!("{} {what}", label("verb"))).or_default() += value;
    }
    Ok(by_kind)
}

/// Requests per resource by verb and resource, the most frequent first.
fn by_kind_text(requests: &Requests) -> String {
    let mut kinds: Vec<(&String, &f64)> = requests.iter().collect();
    kinds.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    kinds
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of the requests each side made per resource, by verb and resource.
fn breakdown_row(what: String, operator: &Measured, other: &Measured) -> Row {
    row(what, operator.breakdown(), other.breakdown(), "")
}

/// Makes a row and prints it at once (a long run shows its figures as they come).
/// Labels of the rows against the floor that does the operator's duties and against the
/// controller-runtime baseline.
const DUTIES: &str = ", floor doing the operator's duties (its status, an Event per creation and per cancel)";
const BASELINE: &str = ", controller-runtime baseline";

/// A throughput row: the operator's figures, the other's, and the other's time over the
/// operator's (above 1 the operator is faster).
fn ratio_row(
    what: String,
    operator: &Measured,
    other: &Measured,
    figures: impl Fn(&Measured) -> String,
) -> Row {
    row(
        what,
        figures(operator),
        figures(other),
        format!("{:.2}×", other.took.as_secs_f64() / operator.took.as_secs_f64()),
    )
}

/// Rounds of scenario 1.
const LATENCY_ROUNDS: usize = 3;

/// A latency row: the `q` quantile of the operator's samples and of the floor's, and their ratio.
fn percentile_row(what: &str, operator: &[Duration], floor: &[Duration], q: f64) -> Row {
    let quantile = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
    };
    let (a, b) = (quantile(operator), quantile(floor));
    row(
        what,
        ms(a),
        ms(b),
        format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()),
    )
}

/// Makes a row and prints it at once (a long run shows its figures as they come).
fn row(
    what: impl Into<String>,
    operator: impl Into<String>,
    floor: impl Into<String>,
    ratio: impl Into<String>,
) -> Row {
    let r = Row {
        what: what.into(),
        operator: operator.into(),
        floor: floor.into(),
        ratio: ratio.into(),
    };
    eprintln!(
        "bench: | {} | {} | {} | {} |",
        r.what, r.operator, r.floor, r.ratio
    );
    r
}

/// Everything the scenarios share.
struct Bench {
    client: Client,
    sim: Simulator,
    cloud: WorkspaceClient,
    options: BenchOptions,
    kubeconfig: PathBuf,
}

/// Runs the benchmark and returns its table (also printed as it goes).
pub async fn run(options: BenchOptions) -> anyhow::Result<Vec<Row>> {
    let harness = Harness::new(options.build_dir.clone());
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&harness)).await??;
    let result = async { Bench::on(&cp, &options).await?.all().await }.await;
    let _ = tokio::task::spawn_blocking(move || cp.stop()).await;
    let mut rows = result?;
    if !options.outage.is_zero() {
        rows.push(outage_recovery(&options).await?);
    }
    print_table(&rows);
    Ok(rows)
}

/// Deletions in flight when the API server goes away, in the outage scenario.
const OUTAGE_RESOURCES: usize = 100;

/// Scenario 8: an API server outage. A control plane of its own (the same address and data
/// after a restart) and the operator holding [`OUTAGE_RESOURCES`] sessions; all are deleted,
/// through a slow cloud so that cancels are on their way, and the control plane stops for
/// `options.outage` and starts again. Measured: from its return until the last resource is
/// gone (the same operator process, never restarted; `tests/outage.rs` checks what happens,
/// this says how fast).
async fn outage_recovery(options: &BenchOptions) -> anyhow::Result<Row> {
    let harness = Harness::new(options.build_dir.clone());
    let dir = options.build_dir.join(format!(
        "outage-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())?
        .port()
        .to_string();
    let args = ["-port".to_string(), port, "-keep-data".to_string()];
    let start = |harness: Harness, dir: PathBuf, args: [String; 3]| {
        tokio::task::spawn_blocking(move || {
            ControlPlane::start_in(
                &harness,
                &dir,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
    };
    let cp = start(harness.clone(), dir.clone(), args.clone()).await??;
    let result = async {
        let bench = Bench::on(&cp, options).await?;
        let ns = bench.namespace("outage").await?;
        let operator = bench.operator(&ns)?;
        bench.create_many(&ns, "ra", OUTAGE_RESOURCES, None).await?;
        bench.wait_active(&ns, OUTAGE_RESOURCES, Duration::from_secs(300)).await?;
        progress(&format!("outage: {OUTAGE_RESOURCES} held; deleting them through a slow cloud, then stopping the API server for {:?}", options.outage));
        bench.sim.set_latency(Duration::from_secs(2));
        let api: Api<RemoteAssistance> = Api::namespaced(bench.client.clone(), &ns);
        api.delete_collection(&DeleteParams::default(), &Default::default()).await.map_err(e)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while bench.sim.in_flight(Operation::CancelRemoteAssistance) == 0 {
            if Instant::now() > deadline {
                anyhow::bail!("no cancel was on its way");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>((bench, ns, operator))
    }
    .await;
    let stopped = tokio::task::spawn_blocking(move || {
        cp.stop();
        cp
    })
    .await?;
    // The operator runs on through the outage (dropping it would stop it).
    let (bench, ns, _operator) = result?;
    tokio::time::sleep(options.outage).await;
    bench.sim.set_latency(Duration::ZERO);
    let cp = start(harness, dir.clone(), args).await??;
    let returned = Instant::now();
    drop(stopped);
    let recovered = async {
        let client = super::demo::client_for(&cp).await?;
        let api: Api<RemoteAssistance> = Api::namespaced(client, &ns);
        loop {
            if let Ok(list) = api.list_metadata(&Default::default()).await
                && list.items.is_empty()
            {
                return Ok::<_, anyhow::Error>(returned.elapsed());
            }
            if returned.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("the deletions did not complete within 10 minutes of the API server's return");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || cp.stop()).await;
    let _ = std::fs::remove_dir_all(&dir);
    let recovered: Duration = recovered?;
    let cancels: usize = (0..OUTAGE_RESOURCES)
        .map(|i| {
            bench
                .sim
                .count(Operation::CancelRemoteAssistance, &format!("{ns}-ra-{i}"))
        })
        .sum();
    Ok(row(
        format!(
            "8. after a {:?} API server outage, {OUTAGE_RESOURCES} deletions in flight: the last done after the API server's return",
            options.outage
        ),
        format!("{} ({cancels} cloud DELETEs)", ms(recovered)),
        "",
        "",
    ))
}

/// Prints the table in Markdown.
pub fn print_table(rows: &[Row]) {
    println!("\n| scenario | operator | floor | ratio |\n|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.operator, r.floor, r.ratio);
    }
}

impl Bench {
    /// The bench on control plane `cp`: the CRDs installed, a simulator that knows the bench's key.
    async fn on(cp: &ControlPlane, options: &BenchOptions) -> anyhow::Result<Bench> {
        let client = super::demo::client_for(cp).await?;
        super::demo::install_crds(&client).await?;
        let sim = Simulator::start().await?;
        sim.add_access_key(AK, SK);
        let cloud = WorkspaceClient::new(&ClientOptions::default())?;
        Ok(Bench {
            client,
            sim,
            cloud,
            options: options.clone(),
            kubeconfig: cp.kubeconfig.clone(),
        })
    }

    async fn all(&self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let o = &self.options;
        if o.latency_samples > 0 {
            rows.extend(self.latency().await?);
        }
        if o.resources > 0 {
            rows.extend(self.create_hold_drain().await?);
        }
        if o.large > 0 {
            rows.extend(self.large_memory().await?);
        }
        if o.latency_scenario_resources > 0 {
            rows.extend(self.cloud_latency().await?);
        }
        if o.large > 0 {
            rows.push(deadline_queue_idle(o.large));
        }
        if o.noisy_resources > 0 {
            rows.extend(self.noisy_neighbour().await?);
        }
        Ok(rows)
    }

    async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": name } })).expect("namespace");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(e)?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": "creds" }, "type": "Opaque",
            "stringData": { "accessKeyId": AK, "secretAccessKey": SK }
        }))
        .expect("secret");
        Api::<Secret>::namespaced(self.client.clone(), &name)
            .create(&PostParams::default(), &secret)
            .await
            .map_err(e)?;
        Ok(name)
    }

    fn manifest(&self, name: &str, desktop: &str, finalizer: Option<&str>) -> RemoteAssistance {
        let mut m = json!({
            "apiVersion": "workspace.assist.dev/v1alpha1", "kind": "RemoteAssistance",
            "metadata": { "name": name },
            "spec": { "projectId": PROJECT, "desktopId": desktop, "endpoint": self.sim.endpoint(), "credentialsSecretRef": { "name": "creds" } }
        });
        if let Some(f) = finalizer {
            m["metadata"]["finalizers"] = json!([f]);
        }
        serde_json::from_value(m).expect("a RemoteAssistance")
    }

    /// Creates `count` resources (names `{prefix}-{i}`), `parallel` at a time.
    async fn create_many(
        &self,
        ns: &str,
        prefix: &str,
        count: usize,
        finalizer: Option<&str>,
    ) -> anyhow::Result<()> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        futures::stream::iter(0..count)
            .map(|i| {
                let api = api.clone();
                let ra = self.manifest(&format!("{prefix}-{i}"), &format!("{ns}-{prefix}-{i}"), finalizer);
                async move {
                    api.create(&PostParams::default(), &ra)
                        .await
                        .map(|_| ())
                        .map_err(e)
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    fn operator(&self, ns: &str) -> anyhow::Result<OperatorProcess> {
        self.operator_with(ns, self.options.concurrency, 100_000)
    }

    fn operator_with(&self, ns: &str, concurrency: u16, rate_limit: u32) -> anyhow::Result<OperatorProcess> {
        self.operator_scoped(&["--namespace", ns], concurrency, rate_limit)
    }

    /// The operator on the resources `scope` selects (`--namespace NS`, or a label selector).
    fn operator_scoped(
        &self,
        scope: &[&str],
        concurrency: u16,
        rate_limit: u32,
    ) -> anyhow::Result<OperatorProcess> {
        let (concurrency, rate_limit) = (concurrency.to_string(), rate_limit.to_string());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())?
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let endpoint = self.sim.endpoint();
        let mut args = vec!["run"];
        args.extend_from_slice(scope);
        args.extend_from_slice(&[
            "--leader-elect",
            "false",
            "--metrics-address",
            &metrics,
            "--concurrency",
            &concurrency,
            "--cloud-rate-limit",
            &rate_limit,
            "--log-level",
            "warn",
            "--allowed-endpoint",
            &endpoint,
        ]);
        OperatorProcess::start(&self.options.operator, &self.kubeconfig, &args, metrics.clone())
    }

    /// Follows a namespace's RemoteAssistances through a watch: waiting on it costs the API
    /// server one list and the watch events, not a list of every object every few milliseconds
    /// (which, at 10,000 objects, took a fifth of the API server's CPU from the work measured).
    async fn watch(&self, ns: &str) -> anyhow::Result<Watched> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        let (store, writer) = kube::runtime::reflector::store();
        let task = tokio::spawn(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(|_| async {}),
        );
        store.wait_until_ready().await?;
        Ok(Watched { store, task })
    }

    async fn wait_active(&self, ns: &str, count: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let watched = self.watch(ns).await?;
        let active = |ra: &RemoteAssistance| ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
        watched
            .wait(
                |store| store.state().iter().filter(|ra| active(ra)).count() >= count,
                timeout,
            )
            .await?;
        Ok(start.elapsed())
    }

    /// Deletes `ra-0` .. `ra-{n-1}` at once and waits until all are gone: (time taken, start).
    async fn delete_all_and_wait(&self, ns: &str, n: usize) -> anyhow::Result<(Duration, Instant)> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        let watched = self.watch(ns).await?;
        let start = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                async move {
                    api.delete(&format!("ra-{i}"), &DeleteParams::default())
                        .await
                        .map(|_| ())
                        .map_err(e)
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        watched
            .wait(
                kube::runtime::reflector::Store::is_empty,
                Duration::from_secs(3600),
            )
            .await?;
        Ok((start.elapsed(), start))
    }

    fn cancels_since(&self, since: Instant) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.operation == Some(Operation::CancelRemoteAssistance) && r.at >= since)
            .count()
    }

    /// Scenario 1, three rounds (the p99 of a few hundred samples moves from run to run): the
    /// percentiles of all samples, and each round's p99.
    async fn latency(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.options.latency_samples;
        let (mut operator, mut floor, mut rounds) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=LATENCY_ROUNDS {
            let (o, f) = self.latency_round(round).await?;
            rounds.push(percentile_row(
                &format!("1. delete → gone, p99 ({n} sequential), round {round} of {LATENCY_ROUNDS}"),
                &o,
                &f,
                0.99,
            ));
            operator.extend(o);
            floor.extend(f);
        }
        let total = n * LATENCY_ROUNDS;
        let mut rows: Vec<Row> = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
            .into_iter()
            .map(|(label, q)| {
                percentile_row(
                    &format!("1. delete → gone, {label} ({total} sequential, {LATENCY_ROUNDS} rounds)"),
                    &operator,
                    &floor,
                    q,
                )
            })
            .collect();
        rows.extend(rounds);
        Ok(rows)
    }

    /// One round of scenario 1: `n` sequential deletions through the operator, then through the
    /// minimal floor, each on a fresh namespace; the sorted latencies.
    async fn latency_round(&self, round: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let n = self.options.latency_samples;
        progress(&format!(
            "1. deletion latency, round {round}: {n} sequential deletions"
        ));
        let ns = self.namespace(&format!("latency-{round}")).await?;
        let op = self.operator(&ns)?;
        self.create_many(&ns, "ra", n, None).await?;
        self.wait_active(&ns, n, Duration::from_secs(600)).await?;
        progress("   operator: deleting one at a time");
        let operator = self.sequential_deletions(&ns, n).await?;
        drop(op);

        let floor_ns = self.namespace(&format!("latency-floor-{round}")).await?;
        for i in 0..n {
            self.sim.open_session(PROJECT, &format!("{floor_ns}-ra-{i}"));
        }
        let floor = FloorClient::start(
            self.client.clone(),
            &floor_ns,
            self.cloud.clone(),
            self.sim.endpoint(),
            self.options.concurrency,
            minimal_status(),
            None,
        );
        self.create_many(&floor_ns, "ra", n, Some(FLOOR_FINALIZER))
            .await?;
        progress("   floor: deleting one at a time");
        let floor_lat = self.sequential_deletions(&floor_ns, n).await?;
        floor.stop();
        Ok((operator, floor_lat))
    }

    async fn sequential_deletions(&self, ns: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        let gone: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = gone.clone();
        let watch = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(api.clone(), watcher::Config::default()).default_backoff());
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Delete(ra) = event {
                    seen.lock().unwrap().insert(ra.name_any(), Instant::now());
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("ra-{i}");
            let start = Instant::now();
            api.delete(&name, &DeleteParams::default()).await.map_err(e)?;
            loop {
                if let Some(at) = gone.lock().unwrap().get(&name) {
                    samples.push(*at - start);
                    break;
                }
                if start.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!("{ns}/{name} not gone within 60s");
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        watch.abort();
        samples.sort();
        Ok(samples)
    }

    /// Scenarios 3, 4 (small), 6 and 2: create to Active, memory and idle cost while holding
    /// them, then drain them all; the operator against two floors (the minimal one, status
    /// `phase: Active`, and one that writes the status the operator wrote: a status that bigger
    /// costs the API server on every later request).
    async fn create_hold_drain(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.options.resources;
        progress(&format!(
            "3. create to Active, 4. memory, 6. idle, 2. drain: {n} resources"
        ));
        let ns = self.namespace("drain").await?;
        let op = self.operator(&ns)?;
        let created = self.create_and_wait(&ns, n).await?;
        let (mut rows, floors) = self.floors_created(&ns, &created).await?;
        rows.extend(self.idle_row(&op, n).await);
        // Steady: after the idle window, or after the operator's periodic return of free memory.
        tokio::time::sleep(STEADY_AFTER.saturating_sub(self.options.idle_window)).await;
        rows.push(row(
            format!("4. memory holding {n} (steady RSS / peak)"),
            op.memory(),
            "",
            "",
        ));
        let operator_rss = rss_bytes(op.child.id());

        // Scenario 2: delete them all at once.
        let drained = self.drain(&ns, n).await?;
        drop(op);
        rows.extend(self.baseline_rows(&created, &drained, operator_rss).await?);
        for (label, floor_ns, floor) in floors {
            let floor_drained = self.drain(&floor_ns, n).await?;
            floor.stop();
            rows.push(ratio_row(
                format!("2. drain {n} deleted at once (deletions per second){label}"),
                &drained,
                &floor_drained,
                |m| m.drain_figures(n),
            ));
            rows.push(breakdown_row(
                format!("2. drain, API requests per deletion by verb and resource{label}"),
                &drained,
                &floor_drained,
            ));
        }
        if drained.calls != n {
            anyhow::bail!("the operator sent {} DELETEs for {n} resources", drained.calls);
        }
        Ok(rows)
    }

    /// The two floors, each on a namespace of its own, create as many resources as the operator
    /// did (`created`, in `ns`): the create rows, and the floors left holding them for the drain.
    /// The minimal floor writes `phase: Active`; the other does the operator's duties, so that
    /// it makes the same API requests: the status the operator wrote and an Event per creation
    /// and per cancel.
    async fn floors_created(
        &self,
        ns: &str,
        created: &Measured,
    ) -> anyhow::Result<(Vec<Row>, Vec<(&'static str, String, FloorClient)>)> {
        let n = self.options.resources;
        let operator_status = self.status_of(ns, "ra-0").await?;
        let events = Arc::new(EventPublisher::new(
            self.client.clone(),
            "bench-floor",
            "bench-floor",
        ));
        let (mut rows, mut floors) = (Vec::new(), Vec::new());
        for (label, suffix, status, events) in [
            ("", "drain-floor", minimal_status(), None),
            (DUTIES, "drain-floor-duties", operator_status, Some(events)),
        ] {
            let floor_ns = self.namespace(suffix).await?;
            let floor = FloorClient::start(
                self.client.clone(),
                &floor_ns,
                self.cloud.clone(),
                self.sim.endpoint(),
                self.options.concurrency,
                status,
                events,
            );
            let floor_created = self.create_and_wait(&floor_ns, n).await?;
            rows.push(ratio_row(
                format!("3. create → Active, {n} resources (per second){label}"),
                created,
                &floor_created,
                |m| m.create_figures(n),
            ));
            rows.push(breakdown_row(
                format!("3. create, API requests per resource by verb and resource{label}"),
                created,
                &floor_created,
            ));
            floors.push((label, floor_ns, floor));
        }
        Ok((rows, floors))
    }

    /// The controller-runtime baseline's requests and memory while holding, and its drain,
    /// against the operator's (`created`, `drained`, `operator_rss` while holding).
    async fn baseline_rows(
        &self,
        created: &Measured,
        drained: &Measured,
        operator_rss: u64,
    ) -> anyhow::Result<Vec<Row>> {
        let n = self.options.resources;
        let BaselineRun {
            drained: baseline_drained,
            holding,
            rss: baseline_rss,
        } = self.baseline_drain(n, Duration::ZERO).await?;
        if baseline_drained.calls != n {
            anyhow::bail!(
                "the baseline sent {} DELETEs for {n} resources",
                baseline_drained.calls
            );
        }
        Ok(vec![
            ratio_row(
                format!("2. drain {n} deleted at once (deletions per second){BASELINE}"),
                drained,
                &baseline_drained,
                |m| m.drain_figures(n),
            ),
            breakdown_row(
                format!("2. drain, API requests per deletion by verb and resource{BASELINE}"),
                drained,
                &baseline_drained,
            ),
            row(
                format!(
                    "3. create, API requests per resource by verb and resource{BASELINE} (it adds its finalizer; it opens no session)"
                ),
                by_kind_text(&created.by_kind),
                by_kind_text(&holding),
                "",
            ),
            row(
                format!("4. memory holding {n}, against the controller-runtime baseline (steady RSS)"),
                mib(operator_rss),
                mib(baseline_rss),
                format!(
                    "{:.2}× (operator / baseline)",
                    operator_rss as f64 / baseline_rss.max(1) as f64
                ),
            ),
        ])
    }

    /// The controller-runtime baseline on a namespace of its own: `n` resources with a session
    /// each, held (its finalizer on every one), then all deleted at once with `latency` on every
    /// cloud call. Returns the drain and its steady RSS while holding them.
    async fn baseline_drain(&self, n: usize, latency: Duration) -> anyhow::Result<BaselineRun> {
        progress(&format!(
            "drain {n}: the controller-runtime baseline ({} ms cloud latency)",
            latency.as_millis()
        ));
        let ns = self.namespace("drain-baseline").await?;
        let harness = Harness::new(self.options.build_dir.clone());
        let binary = tokio::task::spawn_blocking(move || {
            super::control_plane::build_tool(&harness, "./cmd/baseline", "baseline")
        })
        .await??;
        let log = std::fs::File::create(self.options.build_dir.join("baseline.log"))?;
        let child = std::process::Command::new(&binary)
            .arg("-kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "-namespace",
                &ns,
                "-endpoint",
                &self.sim.endpoint(),
                "-concurrency",
                &self.options.concurrency.to_string(),
            ])
            .env("BASELINE_AK", AK)
            .env("BASELINE_SK", SK)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut baseline = Killed(child);
        for i in 0..n {
            self.sim.open_session(PROJECT, &format!("{ns}-ra-{i}"));
        }
        let before = apiserver_requests(&self.client).await?;
        self.create_many(&ns, "ra", n, None).await?;
        let watched = self.watch(&ns).await?;
        let held =
            |ra: &std::sync::Arc<RemoteAssistance>| ra.finalizers().iter().any(|f| f == BASELINE_FINALIZER);
        let started = Instant::now();
        while watched
            .wait(
                |store| store.state().iter().filter(|ra| held(ra)).count() >= n,
                Duration::from_secs(5),
            )
            .await
            .is_err()
        {
            if let Ok(Some(status)) = baseline.0.try_wait() {
                let log =
                    std::fs::read_to_string(self.options.build_dir.join("baseline.log")).unwrap_or_default();
                anyhow::bail!("the baseline exited ({status}):\n{log}");
            }
            if started.elapsed() > Duration::from_secs(3600) {
                anyhow::bail!("the baseline did not hold every resource within an hour");
            }
        }
        drop(watched);
        let holding = per_resource(&before, &apiserver_requests(&self.client).await?, n);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = rss_bytes(baseline.0.id());
        self.sim.set_latency(latency);
        let drained = self.drain(&ns, n).await;
        self.sim.set_latency(Duration::ZERO);
        let drained = drained?;
        drop(baseline);
        Ok(BaselineRun {
            drained,
            holding,
            rss,
        })
    }

    /// Creates `n` resources in `ns` and waits until all are Active.
    async fn create_and_wait(&self, ns: &str, n: usize) -> anyhow::Result<Measured> {
        let (started, before) = (Instant::now(), apiserver_requests(&self.client).await?);
        self.create_many(ns, "ra", n, None).await?;
        self.wait_active(ns, n, Duration::from_secs(3600)).await?;
        let took = started.elapsed();
        let by_kind = per_resource(&before, &apiserver_requests(&self.client).await?, n);
        let calls = self
            .sim
            .requests()
            .iter()
            .filter(|r| r.at >= started && r.operation.is_some())
            .count();
        Ok(Measured {
            took,
            calls,
            api_requests: by_kind.values().sum(),
            by_kind,
        })
    }

    /// Deletes the `n` resources of `ns` at once and waits until they are gone (calls: the
    /// DELETEs the cloud received).
    async fn drain(&self, ns: &str, n: usize) -> anyhow::Result<Measured> {
        let before = apiserver_requests(&self.client).await?;
        let (took, start) = self.delete_all_and_wait(ns, n).await?;
        let by_kind = per_resource(&before, &apiserver_requests(&self.client).await?, n);
        Ok(Measured {
            took,
            calls: self.cancels_since(start),
            api_requests: by_kind.values().sum(),
            by_kind,
        })
    }

    /// Scenario 6: the operator's CPU and cloud calls over the idle window, per hour.
    async fn idle_row(&self, op: &OperatorProcess, n: usize) -> Option<Row> {
        let window = self.options.idle_window;
        if window.is_zero() {
            return None;
        }
        let (cpu0, since) = (op.cpu_seconds(), Instant::now());
        tokio::time::sleep(window).await;
        let cpu = op.cpu_seconds() - cpu0;
        let idle_calls = self
            .sim
            .requests()
            .iter()
            .filter(|r| r.at >= since && r.operation.is_some())
            .count();
        let per_hour = 3600.0 / window.as_secs_f64();
        Some(row(
            format!(
                "6. idle, {n} Active, poll 5m (per hour, from {}s)",
                window.as_secs()
            ),
            format!(
                "{:.1} CPU-s, {:.0} cloud calls",
                cpu * per_hour,
                idle_calls as f64 * per_hour
            ),
            "",
            "",
        ))
    }

    /// Scenario 4 (large): memory and start-up with many existing resources.
    async fn large_memory(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.options.large;
        progress(&format!("4. memory and start-up with {n} existing resources"));
        let ns = self.namespace("large").await?;
        // Already cancelled resources: the operator holds them and makes no cloud call.
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), &ns);
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                let mut ra = self.manifest(
                    &format!("ra-{i}"),
                    &format!("large-{i}"),
                    Some(crate::resource::FINALIZER),
                );
                ra.spec.cancelled = true;
                async move {
                    api.create(&PostParams::default(), &ra).await.map_err(e)?;
                    let status = json!({ "status": { "phase": "Cancelled", "observedGeneration": 1 } });
                    api.patch_status(
                        &format!("ra-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                    .map_err(e)?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        let started = Instant::now();
        let op = self.operator(&ns)?;
        let first = op.wait_reconciles(1, Duration::from_secs(600)).await?;
        let first_reconcile = first.duration_since(started);
        op.wait_reconciles(n as u64, Duration::from_secs(1800)).await?;
        tokio::time::sleep(STEADY_AFTER).await;
        Ok(vec![
            row(
                format!("4. memory holding {n} (steady RSS / peak)"),
                op.memory(),
                "",
                "",
            ),
            row(
                format!("4. start-up to first reconcile with {n} existing"),
                ms(first_reconcile),
                "",
                "",
            ),
        ])
    }

    /// Scenario 5: a drain with 50 ms cloud latency, shaped by concurrency and the rate limit.
    async fn cloud_latency(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.options.latency_scenario_resources;
        progress(&format!("5. drain {n} with 50 ms cloud latency"));
        let mut rows = Vec::new();
        let (mut at_concurrency_16, mut operator_status) = (None, None);
        for (concurrency, limit) in [(16u16, 100000u32), (64, 100000), (64, 50)] {
            let ns = self.namespace("slow").await?;
            let op = self.operator_with(&ns, concurrency, limit)?;
            self.create_many(&ns, "ra", n, None).await?;
            self.wait_active(&ns, n, Duration::from_secs(3600)).await?;
            if concurrency == 16 {
                operator_status = Some(self.status_of(&ns, "ra-0").await?);
            }
            let (took, start) = self.drain_with_latency(&ns, n).await?;
            drop(op);
            if concurrency == 16 {
                at_concurrency_16 = Some(took);
            }
            // Highest number of DELETEs the simulator received in any one-second window.
            let times: Vec<Instant> = self
                .sim
                .requests()
                .iter()
                .filter(|r| r.operation == Some(Operation::CancelRemoteAssistance) && r.at >= start)
                .map(|r| r.at)
                .collect();
            let peak = times
                .iter()
                .map(|t| {
                    times
                        .iter()
                        .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                        .count()
                })
                .max()
                .unwrap_or(0);
            let limit_text = if limit >= 100000 {
                "none".to_string()
            } else {
                format!("{limit}/s")
            };
            rows.push(row(
                format!(
                    "5. drain {n}, 50 ms cloud latency, concurrency {concurrency}, rate limit {limit_text}"
                ),
                format!(
                    "{:.0}/s (peak {peak} DELETEs in 1 s)",
                    n as f64 / took.as_secs_f64()
                ),
                "",
                if limit < 100000 {
                    format!("limit {}", if peak as u32 <= limit { "held" } else { "EXCEEDED" })
                } else {
                    String::new()
                },
            ));
        }
        // The same drain by the controller-runtime baseline, at the same concurrency (16) and
        // with no rate limit: the ratio users meet once the cloud, not the API server, is slow.
        if let Some(took) = at_concurrency_16 {
            let baseline = self.baseline_drain(n, CLOUD_LATENCY).await?.drained;
            rows.push(row(
                format!("5. drain {n}, 50 ms cloud latency, concurrency 16, rate limit none{BASELINE}"),
                format!("{:.0}/s", n as f64 / took.as_secs_f64()),
                format!("{:.0}/s", n as f64 / baseline.took.as_secs_f64()),
                format!(
                    "{:.2}× (target ≥ 1.0×)",
                    baseline.took.as_secs_f64() / took.as_secs_f64()
                ),
            ));
        }
        // And by the floor doing the operator's duties per deletion (the invitation Secret's
        // deletion, an Event): how much of the gap to the baseline those duties cost.
        if let (Some(took), Some(status)) = (at_concurrency_16, operator_status) {
            let floor_took = self.duty_floor_drain_with_latency(n, status).await?;
            rows.push(row(
                format!("5. drain {n}, 50 ms cloud latency, concurrency 16, rate limit none{DUTIES}"),
                format!("{:.0}/s", n as f64 / took.as_secs_f64()),
                format!("{:.0}/s", n as f64 / floor_took.as_secs_f64()),
                format!("{:.2}×", floor_took.as_secs_f64() / took.as_secs_f64()),
            ));
        }
        Ok(rows)
    }

    /// Deletes all `n` resources of `ns` with 50 ms on every cloud call, and waits until they
    /// are gone: how long it took, and when it started.
    async fn drain_with_latency(&self, ns: &str, n: usize) -> anyhow::Result<(Duration, Instant)> {
        self.sim.set_latency(CLOUD_LATENCY);
        let drained = self.delete_all_and_wait(ns, n).await;
        self.sim.set_latency(Duration::ZERO);
        drained
    }

    /// The floor doing the operator's duties (writing `status`, an Event per creation and per
    /// cancel) holding `n` resources at concurrency 16, then draining them with 50 ms cloud
    /// latency: how long the drain took.
    async fn duty_floor_drain_with_latency(
        &self,
        n: usize,
        status: serde_json::Value,
    ) -> anyhow::Result<Duration> {
        progress(&format!(
            "drain {n}: the floor doing the operator's duties (50 ms cloud latency)"
        ));
        let ns = self.namespace("slow-floor-duties").await?;
        let events = Arc::new(EventPublisher::new(
            self.client.clone(),
            "bench-floor",
            "bench-floor",
        ));
        let floor = FloorClient::start(
            self.client.clone(),
            &ns,
            self.cloud.clone(),
            self.sim.endpoint(),
            16,
            status,
            Some(events),
        );
        self.create_and_wait(&ns, n).await?;
        let (took, _) = self.drain_with_latency(&ns, n).await?;
        floor.stop();
        Ok(took)
    }

    /// The status the operator wrote on resource `name` of `ns`, as JSON.
    async fn status_of(&self, ns: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        let status = Api::<RemoteAssistance>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
            .map_err(e)?
            .status;
        Ok(serde_json::to_value(status)?)
    }
}

/// The floor: a minimal client that does only the necessary work. On a new object it adds its
/// finalizer, creates the session and shows it, hands the invitation over in a Secret and writes
/// phase Active; on a deleted one it sends one DELETE, deletes the Secret it handed over (an
/// invitation must not outlive its session) and removes its finalizer.
struct FloorClient {
    task: tokio::task::JoinHandle<()>,
}

impl FloorClient {
    /// `status`: what the floor writes as status once the session is handed over; `events`:
    /// where it publishes an Event per creation and per cancel, as the operator does (none for
    /// the minimal floor).
    fn start(
        client: Client,
        ns: &str,
        cloud: WorkspaceClient,
        endpoint: String,
        concurrency: u16,
        status: serde_json::Value,
        events: Option<Arc<EventPublisher>>,
    ) -> FloorClient {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let api: Api<RemoteAssistance> = Api::namespaced(client, ns);
        let target_for = move |ra: &RemoteAssistance| Target {
            endpoint: resolve_endpoint(None, Some(&endpoint)).expect("endpoint"),
            project_id: ra.spec.project_id.clone(),
            desktop_id: ra.spec.desktop_id.clone(),
        };
        let creds = Credentials::AkSk {
            access_key_id: AK.into(),
            secret_access_key: Sensitive::new(SK),
            security_token: None,
        };
        let permits = Arc::new(Semaphore::new(concurrency as usize));
        let task = tokio::spawn(async move {
            let mut watch = std::pin::pin!(
                watcher(api.clone(), watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(Ok(ra)) = watch.next().await {
                let (api, secrets, cloud, creds, target, permits) = (
                    api.clone(),
                    secrets.clone(),
                    cloud.clone(),
                    creds.clone(),
                    target_for(&ra),
                    permits.clone(),
                );
                let (events, regarding) = (events.clone(), ra.object_ref(&()));
                let has_finalizer = ra.finalizers().iter().any(|f| f == FLOOR_FINALIZER);
                let name = ra.name_any();
                if ra.metadata.deletion_timestamp.is_some() && has_finalizer {
                    tokio::spawn(async move {
                        let _permit = permits.acquire().await;
                        let _ = cloud.cancel(&target, &creds).await;
                        publish(
                            events.as_ref(),
                            &regarding,
                            "Cancelled",
                            "The remote assistance is cancelled",
                            "Cancel",
                        );
                        // What it handed over goes with the session.
                        let _ = secrets
                            .delete(&format!("{name}-invitation"), &DeleteParams::default())
                            .await;
                        let remove = json!({ "metadata": { "finalizers": null } });
                        let _ = api
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&remove))
                            .await;
                    });
                } else if ra.metadata.deletion_timestamp.is_none() && !has_finalizer {
                    let status = status.clone();
                    tokio::spawn(async move {
                        let _permit = permits.acquire().await;
                        let add = json!({ "metadata": { "finalizers": [FLOOR_FINALIZER] } });
                        if api
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&add))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if cloud.create(&target, &creds).await.is_err() {
                            return;
                        }
                        let Ok(shown) = cloud.show(&target, &creds).await else {
                            return;
                        };
                        // The session's access (invitation code) is handed over in a Secret, as
                        // it may not go in status.
                        let secret: Secret = serde_json::from_value(json!({
                            "metadata": { "name": format!("{name}-invitation") },
                            "stringData": { "invitationCode": shown.value.invitation_code.as_ref().map(|c| c.expose().to_string()) }
                        }))
                        .expect("a Secret");
                        if secrets.create(&PostParams::default(), &secret).await.is_ok() {
                            let status = json!({ "status": status });
                            let _ = api
                                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                                .await;
                            publish(
                                events.as_ref(),
                                &regarding,
                                "Active",
                                "The remote assistance is in progress",
                                "Create",
                            );
                        }
                    });
                }
            }
        });
        FloorClient { task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// The floor's Event, in the background as the operator publishes its own.
fn publish(
    events: Option<&Arc<EventPublisher>>,
    regarding: &ObjectReference,
    reason: &'static str,
    note: &'static str,
    action: &'static str,
) {
    let Some(events) = events else { return };
    let (events, regarding) = (events.clone(), regarding.clone());
    tokio::spawn(async move {
        let _ = events
            .publish(
                &Note {
                    type_: EventType::Normal,
                    reason,
                    note,
                    action,
                },
                &regarding,
            )
            .await;
    });
}

/// The status the minimal floor writes.
fn minimal_status() -> serde_json::Value {
    json!({ "phase": "Active" })
}

/// A namespace's RemoteAssistances as a watch sees them.
struct Watched {
    store: kube::runtime::reflector::Store<RemoteAssistance>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Waits until `done` holds for the watched objects (checked every 50 ms, locally).
    async fn wait(
        &self,
        done: impl Fn(&kube::runtime::reflector::Store<RemoteAssistance>) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !done(&self.store) {
            if start.elapsed() > timeout {
                anyhow::bail!("not done within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator binary under measurement.
struct OperatorProcess {
    child: std::process::Child,
    metrics: String,
}

impl OperatorProcess {
    fn start(
        binary: &std::path::Path,
        kubeconfig: &std::path::Path,
        args: &[&str],
        metrics: String,
    ) -> anyhow::Result<OperatorProcess> {
        let child = std::process::Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(OperatorProcess { child, metrics })
    }

    /// The operator's memory now, as "RSS / peak RSS (anonymous: the part that is not the
    /// program's own file pages)".
    fn memory(&self) -> String {
        let field = |name: &str| proc_status_bytes(self.child.id(), name);
        format!(
            "{} / {} ({} anonymous)",
            mib(field("VmRSS:")),
            mib(field("VmHWM:")),
            mib(field("RssAnon:"))
        )
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    /// Waits until the operator counted at least `count` reconciles; returns when it first did.
    async fn wait_reconciles(&self, count: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            {
                if let Ok(resp) = reqwest::get(format!("http://{}/metrics", self.metrics)).await {
                    let text = resp.text().await.unwrap_or_default();
                    let total: f64 = text
                        .lines()
                        .filter(|l| l.starts_with("workspace_assist_reconciles_total{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    if total as u64 >= count {
                        return Ok(Instant::now());
                    }
                }
            }
            if start.elapsed() > timeout {
                anyhow::bail!("fewer than {count} reconciles within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 7: the idle cost of the deadline queue holding `n` future deadlines (one per
/// resource, as with maxDuration on every one): the once-a-second scan that finds nothing due.
pub fn deadline_queue_idle(n: usize) -> Row {
    use crate::controller::pacing::timers::Timers;
    use kube::runtime::reflector::ObjectRef;
    progress(&format!("7. deadline queue idle with {n} deadlines"));
    let timers = Timers::default();
    let now = jiff::Timestamp::now();
    for i in 0..n {
        let at = now + jiff::SignedDuration::from_secs(3600 + i as i64);
        timers.set(
            &format!("uid-{i}"),
            ObjectRef::new(&format!("ra-{i}")).within("bench"),
            at,
        );
    }
    let scans = 100_000u32;
    let started = Instant::now();
    let mut fired = 0;
    for _ in 0..scans {
        fired += timers
            .take_due(std::hint::black_box(jiff::Timestamp::now()))
            .len();
    }
    let per_scan = started.elapsed() / scans;
    assert_eq!(fired, 0, "nothing was due");
    let per_hour =
        per_scan.as_secs_f64() * 3600.0 / crate::controller::pacing::timers::SCAN_EVERY.as_secs_f64();
    row(
        format!("7. deadline queue idle, {n} deadlines queued (one scan a second)"),
        format!(
            "{} ns per scan, {per_hour:.4} CPU-s per hour",
            per_scan.as_nanos()
        ),
        "",
        "",
    )
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resident set of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// A size field (in kB) of a process's /proc status, in bytes; 0 when it cannot be read.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn e(err: kube::Error) -> anyhow::Error {
    anyhow::Error::new(err).context("Kubernetes API")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
