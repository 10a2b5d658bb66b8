//! The controller: watches RemoteAssistances (and the Secrets they name), reconciles each with
//! bounded concurrency, paces cloud calls per object and overall, and records status and Events.

pub mod breaker;
pub mod cloud;
pub mod credentials;
pub mod error;
pub mod events;
pub mod gate;
pub mod polls;
pub mod reconcile;
pub mod secrets;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::resource::{DELETION_POLICY_ANNOTATION, DeletionPolicy, RemoteAssistance, SECRET_FINALIZER};
use crate::telemetry::{Health, Metrics};
use crate::workspace::{ClientOptions, TokenCache, WorkspaceClient};

pub use error::Error;
use events::{EventPublisher, EventType, Note};
pub use gate::BackoffPolicy;

/// How long a confirmed cancel is remembered in memory (beyond that, status records it, or the
/// object is long gone).
pub const CANCEL_MEMORY: Duration = Duration::from_secs(600);

/// Longest a reconcile waits for the cache to catch up with this process's own status write.
pub const OWN_WRITE_WAIT: Duration = Duration::from_secs(10);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace (all namespaces when None).
    pub namespace: Option<String>,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Most cloud calls per second, over all resources.
    pub cloud_rate_limit: NonZeroU32,
    /// How often an open session is observed.
    pub poll_interval: Duration,
    /// Backoff after failures.
    pub backoff: BackoffPolicy,
    /// Credentials Secret (namespace, name) for resources that name none.
    pub default_credentials: Option<(String, String)>,
    /// Deletion policy of resources that set none.
    pub default_deletion_policy: DeletionPolicy,
    /// Error codes that also mean "not found".
    pub not_found_codes: Vec<String>,
    /// IAM endpoint for password logins whose Secret names none (default: the region's).
    pub iam_endpoint: Option<url::Url>,
    /// HTTP client settings.
    pub client: ClientOptions,
    /// Name of this instance in Events (the pod name in a cluster).
    pub instance: String,
    /// A resource deleting for longer than this counts as stuck in the metrics.
    pub stuck_deleting_after: Duration,
    /// After credentials fail to authenticate, how long calls with them are held back (one
    /// probe at the end): the gateway locks an AK/SK for 5 minutes after 5 failures.
    pub unauthenticated_hold: Duration,
    /// Whether this instance may make cloud calls now (the leader election's proof).
    pub fence: crate::leader::Fence,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            concurrency: 16,
            cloud_rate_limit: NonZeroU32::new(50).expect("non-zero"),
            poll_interval: Duration::from_secs(300),
            backoff: BackoffPolicy::default(),
            default_credentials: None,
            default_deletion_policy: DeletionPolicy::Cancel,
            not_found_codes: Vec::new(),
            iam_endpoint: None,
            client: ClientOptions::default(),
            instance: "workspace-assist".into(),
            stuck_deleting_after: Duration::from_secs(600),
            unauthenticated_hold: Duration::from_secs(300),
            fence: crate::leader::Fence::always_open(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Cloud client.
    pub cloud: WorkspaceClient,
    /// Settings.
    pub config: Config,
    /// Per-object pacing.
    pub gates: gate::Gates,
    /// IAM tokens of password logins.
    pub tokens: TokenCache,
    /// Per-credential pacing after authentication failures.
    pub breakers: breaker::Breakers,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    events: Arc<EventPublisher>,
    limiter: DefaultDirectRateLimiter,
    /// Confirmed cancels by UID, kept for a while after the object is gone: the cache may still
    /// hold the object and queue one more reconcile for it.
    cancelled: Mutex<HashMap<String, std::time::Instant>>,
    /// Latest resourceVersion of each watched Secret, and whether it carries the pin.
    secret_versions: Mutex<HashMap<(String, String), (String, bool)>>,
    /// Credentials read from a Secret at a resourceVersion: a Secret that did not change since
    /// is not read again.
    credentials_cache: Mutex<HashMap<(String, String), (String, Secret)>>,
    /// When each open session was last observed, and which polls are due.
    pub observations: Arc<polls::Observations>,
    invitations: Mutex<HashMap<String, u64>>,
    /// The resourceVersion of this process's last status write, by UID.
    own_writes: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    store: OnceLock<Store<RemoteAssistance>>,
    namespaces: OnceLock<Store<PartialObjectMeta<Namespace>>>,
}

impl Context {
    /// Builds the shared context.
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Result<Context, String> {
        let cloud = WorkspaceClient::new(&config.client)?;
        let observations = Arc::new(polls::Observations::new(config.poll_interval));
        let breakers = breaker::Breakers::new(config.unauthenticated_hold);
        Ok(Context {
            events: Arc::new(EventPublisher::new(client.clone(), "workspace-assist", &config.instance)),
            limiter: RateLimiter::direct(cloud_quota(config.cloud_rate_limit)),
            client,
            cloud,
            config,
            gates: gate::Gates::default(),
            tokens: TokenCache::default(),
            breakers,
            metrics,
            cancelled: Mutex::default(),
            secret_versions: Mutex::default(),
            credentials_cache: Mutex::default(),
            observations,
            invitations: Mutex::default(),
            own_writes: Mutex::default(),
            store: OnceLock::new(),
            namespaces: OnceLock::new(),
        })
    }

    /// The controller's cache of RemoteAssistances (set when the controller starts).
    pub fn store(&self) -> Option<&Store<RemoteAssistance>> {
        self.store.get()
    }

    /// The namespace's deletion-policy annotation: from the watch of namespace metadata, or
    /// read from the API server when the watch does not hold the namespace (yet).
    pub async fn namespace_deletion_policy(&self, namespace: &str) -> Result<Option<String>, Error> {
        let annotation = |meta: &kube::core::ObjectMeta| meta.annotations.as_ref().and_then(|a| a.get(DELETION_POLICY_ANNOTATION).cloned());
        if let Some(cached) = self.namespaces.get().and_then(|store| store.get(&ObjectRef::new(namespace))) {
            return Ok(annotation(&cached.metadata));
        }
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_metadata_opt(namespace)
            .await
            .map_err(|e| Error::kubernetes("get", "Namespace", format!("{namespace} (its deletion-policy annotation)"), e))?;
        Ok(ns.and_then(|ns| annotation(&ns.metadata)))
    }

    /// Waits for the overall cloud rate limit.
    pub async fn rate_limit(&self) {
        self.limiter.until_ready().await;
    }

    /// Remembers that the cloud confirmed this object's cancel.
    pub fn confirm_cancelled(&self, uid: &str) {
        let now = std::time::Instant::now();
        let mut cancelled = self.cancelled.lock().expect("cancelled set");
        cancelled.retain(|_, at| now.duration_since(*at) < CANCEL_MEMORY);
        cancelled.insert(uid.to_string(), now);
    }

    /// Whether this process saw the cloud confirm this object's cancel.
    pub fn was_cancelled(&self, uid: &str) -> bool {
        self.cancelled.lock().expect("cancelled set").contains_key(uid)
    }

    /// Forgets the per-object state of an object that is gone (its confirmed cancel is kept for
    /// [`CANCEL_MEMORY`]).
    pub fn forget(&self, uid: &str) {
        self.invitations.lock().expect("invitations").remove(uid);
        self.observations.forget(uid);
        self.own_writes.lock().expect("own writes").remove(uid);
        self.gates.forget(uid);
    }

    /// Records the resourceVersion of a status write of this process.
    pub fn wrote(&self, uid: &str, resource_version: &str) {
        if let Ok(version) = resource_version.parse::<u64>() {
            self.own_writes.lock().expect("own writes").insert(uid.to_string(), (version, std::time::Instant::now()));
        }
    }

    /// Whether the cached object predates this process's last status write of it (made less
    /// than [`OWN_WRITE_WAIT`] ago). The resourceVersions of one etcd are increasing integers;
    /// anything else never counts as older. The record goes once the cache has caught up or
    /// the wait is over, so a store restored from backup cannot hold an object back.
    pub fn is_older_than_own_write(&self, ra: &RemoteAssistance) -> bool {
        let Some(version) = ra.resource_version().and_then(|v| v.parse::<u64>().ok()) else { return false };
        let uid = ra.uid().unwrap_or_default();
        let mut writes = self.own_writes.lock().expect("own writes");
        match writes.get(&uid) {
            Some((written, at)) if version < *written && at.elapsed() < OWN_WRITE_WAIT => true,
            Some(_) => {
                writes.remove(&uid);
                false
            }
            None => false,
        }
    }

    /// The Secret, from the cache when the watch says it has not changed since it was read.
    pub async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        let latest = self.secret_versions.lock().expect("secret versions").get(&key).map(|(v, _)| v.clone());
        if let (Some(latest), Some((cached_version, secret))) = (latest, self.credentials_cache.lock().expect("credentials").get(&key)) {
            if latest == *cached_version {
                return Ok(Some(secret.clone()));
            }
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace).get_opt(name).await?;
        match &secret {
            Some(s) => {
                let version = s.resource_version().unwrap_or_default();
                self.credentials_cache.lock().expect("credentials").insert(key, (version, s.clone()));
            }
            None => {
                self.credentials_cache.lock().expect("credentials").remove(&key);
            }
        }
        Ok(secret)
    }

    /// A fingerprint of the data of the credentials Secret `ra` uses (its own, or the default),
    /// as the cache has it; None when there is none or it cannot be read.
    pub async fn credentials_fingerprint(&self, ra: &RemoteAssistance) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let (namespace, name) = match &ra.spec.credentials_secret_ref {
            Some(r) => (ra.namespace().unwrap_or_default(), r.name.clone()),
            None => self.config.default_credentials.clone()?,
        };
        let secret = self.secret(&namespace, &name).await.ok()??;
        let mut hasher = std::hash::DefaultHasher::new();
        secret.type_.hash(&mut hasher);
        for (key, value) in secret.data.iter().flatten() {
            key.hash(&mut hasher);
            value.0.hash(&mut hasher);
        }
        Some(hasher.finish())
    }

    /// Whether the watch says Secret `namespace/name` carries no pin (so releasing it needs no
    /// API call). Unknown Secrets count as possibly pinned.
    pub fn known_unpinned(&self, namespace: &str, name: &str) -> bool {
        self.secret_versions
            .lock()
            .expect("secret versions")
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|(_, pinned)| !pinned)
    }

    /// Forgets a confirmed cancel once the status records it.
    pub fn forget_cancel(&self, uid: &str) {
        self.cancelled.lock().expect("cancelled set").remove(uid);
    }

    /// Publishes an Event in the background: a failed publish is logged, never blocks the
    /// reconcile.
    pub fn publish(&self, ra: &RemoteAssistance, type_: EventType, reason: &'static str, note: &str, action: &'static str) {
        let events = self.events.clone();
        let regarding = ra.object_ref(&());
        let note = note.to_string();
        tokio::spawn(async move {
            if let Err(e) = events.publish(&Note { type_, reason, note: &note, action }, &regarding).await {
                warn!(error = %e, reason, "could not publish an Event");
            }
        });
    }

    /// The resources to reconcile when a Secret changed: those in its namespace that name it,
    /// or that use it as the default credentials. Unchanged versions (re-lists) trigger nothing.
    fn on_secret(self: &Arc<Self>, secret: &PartialObjectMeta<Secret>, store: &Store<RemoteAssistance>) -> Vec<ObjectRef<RemoteAssistance>> {
        let (Some(ns), Some(name)) = (secret.namespace(), secret.metadata.name.clone()) else { return vec![] };
        if secret.metadata.deletion_timestamp.is_some() && secret.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
            // A pinned Secret is being deleted: let it go as soon as no resource needs it.
            let ctx = self.clone();
            let (ns, name) = (ns.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = ctx.release_secret_if_unused(&ns, &name, "").await {
                    if let Error::Kubernetes(f) = &e {
                        ctx.metrics.kubernetes_error(f.verb, f.kind, f.status());
                    }
                    warn!(error = %e, secret = %name, "could not release the credentials Secret");
                }
            });
        }
        let version = secret.resource_version().unwrap_or_default();
        let key = (ns.clone(), name.clone());
        let pinned = secret.finalizers().iter().any(|f| f == SECRET_FINALIZER);
        let previous = self.secret_versions.lock().expect("secret versions").insert(key.clone(), (version.clone(), pinned));
        if previous.map(|(v, _)| v) == Some(version) {
            return vec![];
        }
        let is_default = self.config.default_credentials.as_ref() == Some(&key);
        store
            .state_filter(|ra| match &ra.spec.credentials_secret_ref {
                Some(r) => r.name == name && ra.namespace().as_deref() == Some(ns.as_str()),
                None => is_default,
            })
            .into_iter()
            .map(|ra| {
                self.gates.secret_changed(&ra.uid().unwrap_or_default());
                ObjectRef::from_obj(&*ra)
            })
            .collect()
    }
}

/// Where the controller reports: metrics and readiness.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// Runs the controller until `shutdown` completes; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    config: Config,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), String> {
    let ctx = Arc::new(Context::new(client.clone(), config, telemetry.metrics.clone())?);
    // Which answers release a finalizer is the operator's most consequential setting: say it.
    if ctx.config.not_found_codes.is_empty() {
        info!("\"nothing to cancel\" is a 404 with a Workspace (WKS.*) error body only; no extra not-found codes configured");
    } else {
        info!(codes = ?ctx.config.not_found_codes, "\"nothing to cancel\" is a 404 with a Workspace error body, or one of these configured not-found codes");
    }
    let (resources, secrets): (Api<RemoteAssistance>, Api<PartialObjectMeta<Secret>>) = match &ctx.config.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // The cache keeps only what reconciles read: managed fields and the last-applied annotation
    // (a copy of the whole object) are dropped as objects arrive.
    let (store, writer) = reflector::store();
    let resources = watcher(resources, watcher::Config::default().any_semantic())
        .backoff(watch_backoff())
        .modify(|ra: &mut RemoteAssistance| {
            ra.managed_fields_mut().clear();
            ra.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
        })
        .reflect(writer)
        .applied_objects();
    let (resources, resources_relay) = relay(resources, "RemoteAssistance");
    let controller = Controller::for_stream(resources, store.clone());
    let _ = ctx.store.set(store.clone());
    // Secrets only trigger reconciles: their metadata (name, resourceVersion, finalizers) is enough.
    // Invitation Secrets (one per resource, written by the operator) are left out.
    let secrets_config = watcher::Config::default().any_semantic().labels(&format!("!{}", secrets::INVITATION_LABEL));
    let (secrets, secrets_relay) = relay(watcher(secrets, secrets_config).backoff(watch_backoff()).touched_objects(), "Secret");
    let namespaces = tokio::spawn(watch_namespaces(ctx.clone()));
    let gauges = tokio::spawn(report_resources(store.clone(), telemetry.clone(), ctx.config.stuck_deleting_after));
    let mapper_ctx = ctx.clone();
    let polls = polls::due(ctx.observations.clone(), store.clone());
    controller
        .reconcile_on(polls)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_stream(secrets, move |secret| mapper_ctx.on_secret(&secret, &store))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(%object, "reconciled"),
                Err(controller::Error::ReconcilerFailed(failure, object)) => {
                    let retry_after_ms = failure.retry_after.as_millis() as u64;
                    let reason = failure.error.reason();
                    let request_id = failure.error.cloud_error().and_then(|e| e.request_id()).unwrap_or_default().to_string();
                    if matches!(failure.error, Error::Cloud { .. }) && !failure.error.needs_human() {
                        info!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed; retrying with backoff")
                    } else {
                        warn!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed")
                    }
                }
                Err(controller::Error::ObjectNotFound(_)) => {}
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
    gauges.abort();
    namespaces.abort();
    resources_relay.abort();
    secrets_relay.abort();
    Ok(())
}

/// The cloud call quota: `per_second` calls spaced evenly, no burst, so that no one-second
/// window (as the cloud's gateway counts) ever holds more than `per_second` calls. (A burst the
/// size of the rate would allow nearly twice the rate in the second after a quiet spell.)
fn cloud_quota(per_second: NonZeroU32) -> Quota {
    Quota::with_period(Duration::from_secs(1) / per_second.get()).expect("a non-zero period").allow_burst(NonZeroU32::MIN)
}

/// Runs a watch (with its backoff) in a task of its own and hands its objects on; its errors
/// are logged there. The controller merges its trigger streams and does not always poll one
/// that is backing off: a watch driven by the controller can stay down for tens of seconds
/// after the API server is back. Driven by its own task, it retries on its own schedule.
fn relay<T: Send + 'static>(
    watch: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> (impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static, tokio::task::JoinHandle<()>) {
    use futures::SinkExt;
    let (mut tx, rx) = futures::channel::mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut watch = std::pin::pin!(watch);
        while let Some(item) = watch.next().await {
            match item {
                Ok(object) => {
                    if tx.send(Ok(object)).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, watch = what, "watch failed; retrying"),
            }
        }
    });
    (rx, task)
}

/// How the watches retry after an error: from 0.5 s, doubling, at most 5 s apart (kube's default
/// goes to 30 s), so that work resumes within seconds of the API server coming back.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .into()
}

/// Keeps the metadata of the watched namespaces (all, or the one watched) in a cache, so that a
/// deletion reads the namespace's deletion policy without an API call.
async fn watch_namespaces(ctx: Arc<Context>) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    let config = match &ctx.config.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (store, writer) = reflector::store();
    let _ = ctx.namespaces.set(store);
    watcher(api, config.any_semantic())
        .backoff(watch_backoff())
        .modify(|ns: &mut PartialObjectMeta<Namespace>| ns.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                warn!(error = %e, "namespace watch");
            }
        })
        .await;
}

/// Marks the instance ready once the cache is synced, then keeps the per-phase gauges current.
async fn report_resources(store: Store<RemoteAssistance>, telemetry: Telemetry, stuck_after: Duration) {
    if store.wait_until_ready().await.is_ok() {
        telemetry.health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let phases = ["Pending", "Active", "Cancelling", "Cancelled", "Closed", "Failed"];
    for round in 0u64.. {
        // Every 30 s (and once the cache is built), free heap pages go back to the system.
        if round % 6 == 0 {
            crate::memory::release_free_memory();
        }
        let now = jiff::Timestamp::now();
        let mut counts: Vec<(&'static str, i64)> = phases.iter().map(|p| (*p, 0)).collect();
        let mut stuck = 0;
        for ra in store.state() {
            if let Some(phase) = ra.status.as_ref().and_then(|s| s.phase) {
                let name = format!("{phase:?}");
                if let Some(c) = counts.iter_mut().find(|(p, _)| *p == name) {
                    c.1 += 1;
                }
            }
            if let Some(deleting) = &ra.metadata.deletion_timestamp {
                if now.duration_since(deleting.0).unsigned_abs() > stuck_after {
                    stuck += 1;
                }
            }
        }
        telemetry.metrics.set_resources(&counts, stuck);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_one_second_window_exceeds_the_cloud_rate_limit() {
        use governor::clock::{Clock, FakeRelativeClock};
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(cloud_quota(NonZeroU32::new(50).unwrap()), clock.clone());
        // As many calls as the limiter lets through, each as early as it allows, over 3 s.
        let mut admitted = Vec::new();
        while clock.now().as_u64() < 3_000_000_000 {
            if limiter.check().is_ok() {
                admitted.push(clock.now().as_u64());
            } else {
                clock.advance(Duration::from_micros(100));
            }
        }
        let busiest = admitted.iter().map(|t| admitted.iter().filter(|u| **u >= *t && **u < *t + 1_000_000_000).count()).max().unwrap();
        assert_eq!(busiest, 50, "at most the limit in any one-second window");
        assert!(admitted.len() >= 149, "and the limit is used: {}", admitted.len());
    }

    #[test]
    fn watches_retry_within_seconds() {
        let delays: Vec<Duration> = watch_backoff().take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
    }
}
