//! Scenario 9, a noisy neighbour: one operator for every namespace, namespace N churning (its
//! resources' retry annotation rewritten round the clock, a wrong key, large annotations) while
//! namespace Q deletes resources and has deadlines falling due. Q's figures with N are compared
//! with Q's figures alone, in the same run and the same operator process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::{Bench, OperatorProcess, Row, STEADY_AFTER, e, mib, percentile_row, progress, row, rss_bytes};
use crate::resource::{Phase, RemoteAssistance};
use crate::workspace::Operation;

/// The session length of Q's time-boxed resources: long enough for all of them to be set up
/// before the first falls due.
const DEADLINE_AFTER: Duration = Duration::from_secs(45);

/// What Q saw in one round.
struct QuietRound {
    /// Each deletion's time from the DELETE to the object gone.
    deletions: Vec<Duration>,
    /// Each deadline's cancel, after the deadline in status (zero when it came on time).
    lateness: Vec<Duration>,
}

impl Bench {
    /// Scenario 9 (see the module): rows for Q's deletions and deadlines with and without N, and
    /// the operator's steady memory with N's large annotations against the same count without.
    pub(super) async fn noisy_neighbour(&self) -> anyhow::Result<Vec<Row>> {
        let (noisy, quiet) = (self.options.noisy_resources, self.options.quiet_resources);
        let bytes = self.options.noisy_annotation_bytes;
        progress(&format!(
            "9. noisy neighbour: {noisy} churning in N, {quiet} deletions and {quiet} deadlines in Q"
        ));
        let run = format!("{:06x}", rand::random::<u32>() & 0xffffff);
        let quiet_ns = self.namespace("quiet").await?;
        let noisy_ns = self.namespace("noisy").await?;
        let op = self.operator_for_label(&format!("bench-run={run}"))?;

        let alone = self.quiet_round(&quiet_ns, &run, "alone", quiet).await?;

        // N: its resources, first without large annotations (memory), then with them.
        progress(&format!("   N: {noisy} resources on a wrong key"));
        Api::<Secret>::namespaced(self.client.clone(), &noisy_ns)
            .patch(
                "creds",
                &PatchParams::default(),
                &Patch::Merge(json!({ "stringData": { "secretAccessKey": "a-wrong-key" } })),
            )
            .await
            .map_err(e)?;
        let noisy_names: Vec<String> = (0..noisy).map(|i| format!("n-{i}")).collect();
        self.create_labelled(&noisy_ns, &run, &noisy_names, None).await?;
        tokio::time::sleep(STEADY_AFTER).await;
        let rss_without = rss_bytes(op.child.id());
        progress(&format!("   N: {bytes} bytes of annotations on each"));
        let notes = "n".repeat(bytes);
        self.patch_all(
            &noisy_ns,
            &noisy_names,
            |_| json!({ "metadata": { "annotations": { "example.com/notes": notes } } }),
        )
        .await?;
        tokio::time::sleep(STEADY_AFTER).await;
        let rss_with = rss_bytes(op.child.id());

        progress("   N: churning (each resource's retry annotation rewritten, round the clock)");
        let churn = Churn::start(self.client.clone(), noisy_ns.clone(), noisy_names.clone());
        let crowded = self.quiet_round(&quiet_ns, &run, "crowded", quiet).await?;
        // The control: the same churn on resources the operator no longer selects, so that
        // what is left is the API server's (and the machine's) share of the slowdown.
        progress("   N: relabelled out of the operator's selector, still churning");
        self.patch_all(
            &noisy_ns,
            &noisy_names,
            |_| json!({ "metadata": { "labels": { "bench-run": "elsewhere" } } }),
        )
        .await?;
        let unseen = self.quiet_round(&quiet_ns, &run, "unseen", quiet).await?;
        let (patches, churned_for) = churn.stop().await;
        drop(op);

        let late = |r: &QuietRound| r.lateness.iter().max().copied().unwrap_or_default();
        let churn_text = format!(
            ", N churning {:.0} annotation changes/s over {noisy}",
            patches as f64 / churned_for.as_secs_f64()
        );
        let mut rows = Vec::new();
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            rows.push(percentile_row(
                &format!("9. Q's delete → gone, {label} ({quiet} deleted 20/s), with N vs alone{churn_text}"),
                &crowded.deletions,
                &alone.deletions,
                q,
            ));
        }
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            rows.push(percentile_row(
                &format!(
                    "9. Q's delete → gone, {label}, with N churning outside the operator's selector vs alone (the API server's share)"
                ),
                &unseen.deletions,
                &alone.deletions,
                q,
            ));
        }
        rows.push(row(
            format!("9. Q's latest deadline cancel ({quiet} due together), with N vs alone"),
            format!("{} late", super::ms(late(&crowded))),
            format!("{} late", super::ms(late(&alone))),
            if late(&crowded) <= Duration::from_secs(2) {
                "target ≤ 2 s met"
            } else {
                "target ≤ 2 s MISSED"
            },
        ));
        rows.push(row(
            format!("9. steady RSS holding N's {noisy}, with {bytes} B of annotations each vs without"),
            mib(rss_with),
            mib(rss_without),
            format!("{:.2}× (target ≤ 1.10×)", rss_with as f64 / rss_without as f64),
        ));
        Ok(rows)
    }

    /// An operator for every namespace, reconciling only the resources with `selector`, at the
    /// default cloud rate limit (the budget is what N and Q share).
    fn operator_for_label(&self, selector: &str) -> anyhow::Result<OperatorProcess> {
        self.operator_scoped(
            &["--watch-label-selector", selector],
            self.options.concurrency,
            50,
        )
    }

    /// Creates resources labelled for this run, `max_duration` on each when given.
    async fn create_labelled(
        &self,
        ns: &str,
        run: &str,
        names: &[String],
        max_duration: Option<&str>,
    ) -> anyhow::Result<()> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        each(names, |name| {
            let api = api.clone();
            let mut ra = self.manifest(name, &format!("{ns}-{name}"), None);
            ra.labels_mut().insert("bench-run".into(), run.into());
            ra.spec.max_duration = max_duration.map(str::to_string);
            async move { api.create(&PostParams::default(), &ra).await.map(|_| ()) }
        })
        .await
    }

    async fn patch_all(
        &self,
        ns: &str,
        names: &[String],
        patch: impl Fn(&str) -> serde_json::Value,
    ) -> anyhow::Result<()> {
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        each(names, |name| {
            let (api, body) = (api.clone(), patch(name));
            async move {
                api.patch(name, &PatchParams::default(), &Patch::Merge(body))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// One round of Q: `n` resources to delete and `n` time-boxed ones, all Active; then the
    /// deletions at 20 a second while the deadlines fall due. Cleans up after itself.
    async fn quiet_round(&self, ns: &str, run: &str, round: &str, n: usize) -> anyhow::Result<QuietRound> {
        progress(&format!("   Q ({round}): {n} to delete, {n} with deadlines"));
        let doomed: Vec<String> = (0..n).map(|i| format!("{round}-d-{i}")).collect();
        let boxed: Vec<String> = (0..n).map(|i| format!("{round}-t-{i}")).collect();
        let max_duration = format!("{}s", DEADLINE_AFTER.as_secs());
        self.create_labelled(ns, run, &boxed, Some(&max_duration)).await?;
        self.create_labelled(ns, run, &doomed, None).await?;
        let api: Api<RemoteAssistance> = Api::namespaced(self.client.clone(), ns);
        let gone: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = gone.clone();
        let watch_api = api.clone();
        let watch = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(watch_api, watcher::Config::default()).default_backoff());
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Delete(ra) = event {
                    seen.lock().unwrap().insert(ra.name_any(), Instant::now());
                }
            }
        });
        let watched = self.watch(ns).await?;
        let in_round = |ra: &RemoteAssistance| ra.name_any().starts_with(&format!("{round}-"));
        let active = |ra: &RemoteAssistance| ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
        watched
            .wait(
                |store| {
                    store
                        .state()
                        .iter()
                        .filter(|ra| in_round(ra) && active(ra))
                        .count()
                        >= 2 * n
                },
                Duration::from_secs(1800),
            )
            .await?;
        // The deadlines as status gives them while the sessions are held (a cancel clears them).
        let deadlines: HashMap<String, jiff::Timestamp> = watched
            .store
            .state()
            .iter()
            .filter(|ra| boxed.contains(&ra.name_any()))
            .filter_map(|ra| Some((ra.name_any(), ra.status.as_ref()?.expires_at.as_ref()?.0)))
            .collect();

        // The deletions, 20 a second.
        let mut sent = HashMap::new();
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for name in &doomed {
            pace.tick().await;
            sent.insert(name.clone(), Instant::now());
            api.delete(name, &DeleteParams::default()).await.map_err(e)?;
        }
        watched
            .wait(
                |store| store.state().iter().all(|ra| !doomed.contains(&ra.name_any())),
                Duration::from_secs(1800),
            )
            .await?;

        // The deadlines: each cancel against the deadline its status gave.
        let cancelled =
            |ra: &RemoteAssistance| ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Cancelled);
        watched
            .wait(
                |store| {
                    store
                        .state()
                        .iter()
                        .filter(|ra| in_round(ra) && cancelled(ra))
                        .count()
                        >= n
                },
                Duration::from_secs(1800),
            )
            .await?;
        let (now_instant, now_wall) = (Instant::now(), jiff::Timestamp::now());
        let cancels: HashMap<String, Instant> = self
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.operation == Some(Operation::CancelRemoteAssistance) && r.status == 204)
            .map(|r| (r.desktop_id, r.at))
            .collect();
        let mut lateness = Vec::new();
        for name in &boxed {
            let expires = *deadlines
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("{name} had no expiresAt while Active"))?;
            let cancel = cancels
                .get(&format!("{ns}-{name}"))
                .ok_or_else(|| anyhow::anyhow!("no cancel seen for {name}"))?;
            // The cancel's wall-clock time, from the simulator's monotonic one.
            let ago = now_instant.duration_since(*cancel);
            let at = now_wall - jiff::SignedDuration::try_from(ago)?;
            let late = at.duration_since(expires);
            lateness.push(Duration::try_from(late).unwrap_or_default());
        }
        let deletions = doomed
            .iter()
            .map(|name| {
                let at = gone.lock().unwrap().get(name).copied();
                at.map(|at| at - sent[name])
                    .ok_or_else(|| anyhow::anyhow!("no deletion seen for {name}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        watch.abort();
        each(&boxed, |name| {
            let api = api.clone();
            async move { api.delete(name, &DeleteParams::default()).await.map(|_| ()) }
        })
        .await?;
        watched
            .wait(
                |store| !store.state().iter().any(|ra| in_round(ra)),
                Duration::from_secs(1800),
            )
            .await?;
        Ok(QuietRound { deletions, lateness })
    }
}

/// Makes one API request per name, 32 at a time; the first failure ends it.
async fn each<'a, Fut>(names: &'a [String], request: impl FnMut(&'a String) -> Fut) -> anyhow::Result<()>
where
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    futures::stream::iter(names)
        .map(request)
        .buffer_unordered(32)
        .map_err(e)
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
}

/// Rewrites the retry annotation of N's resources, one after another, as fast as the API server
/// takes it (at most once a second each), until stopped.
struct Churn {
    stop: Arc<AtomicBool>,
    patches: Arc<AtomicU64>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn start(client: kube::Client, ns: String, names: Vec<String>) -> Churn {
        let (stop, patches) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (stopped, counted) = (stop.clone(), patches.clone());
        let task = tokio::spawn(async move {
            let api: Api<RemoteAssistance> = Api::namespaced(client, &ns);
            for token in 0u64.. {
                let round = Instant::now();
                let done: u64 = futures::stream::iter(names.clone())
                    .map(|name| {
                        let body = json!({ "metadata": { "annotations": { "workspace.assist.dev/retry": token.to_string() } } });
                        let api = api.clone();
                        async move {
                            let patched = api.patch(&name, &PatchParams::default(), &Patch::Merge(body)).await;
                            u64::from(patched.is_ok())
                        }
                    })
                    .buffer_unordered(16)
                    .fold(0, |sum, ok| async move { sum + ok })
                    .await;
                counted.fetch_add(done, Ordering::Relaxed);
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(round.elapsed())).await;
            }
        });
        Churn {
            stop,
            patches,
            started: Instant::now(),
            task,
        }
    }

    /// Stops after the round under way: the patches made and for how long.
    async fn stop(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (self.patches.load(Ordering::Relaxed), self.started.elapsed())
    }
}
