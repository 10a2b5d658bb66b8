//! The controller: watches RemoteAssistances (and the Secrets they name), reconciles each with
//! bounded concurrency, paces cloud calls per object and overall, and records status and Events.

pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod pacing;
pub(crate) mod reconcile;
pub(crate) mod report;
pub(crate) mod watches;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
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
use crate::workspace::{ClientOptions, WorkspaceClient};

pub use credentials::endpoints::{EndpointPolicy, EndpointRule};
pub use credentials::selector::LabelSelector;
use credentials::{cache as credential_cache, endpoints, index as secret_index, selector};
pub use error::Error;
pub use pacing::gate::BackoffPolicy;
use pacing::{gate, polls, timers};
pub use reconcile::deadline::Limits;
use reconcile::{deadline, holders, invitation, recall};
use report::events::{EventPublisher, EventType, Note};
pub use watches::streaming_lists::supported as streaming_lists_supported;
use watches::{after_lists as triggers, streaming_lists};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace (all namespaces when None).
    pub namespace: Option<String>,
    /// Reconcile only RemoteAssistances whose labels match this selector (sharding).
    pub label_selector: Option<String>,
    /// Start the watches with a streaming list when the API server has one (it is asked at
    /// start; the default); false: always with a plain list.
    pub streaming_lists: bool,
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
    /// The namespaces whose resources may use the default credentials (None: no namespace).
    pub default_credentials_namespaces: Option<selector::LabelSelector>,
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
    /// The endpoints credentials may be sent to.
    pub endpoints: endpoints::EndpointPolicy,
    /// The operator's own identity, used (like the default Secret) by resources that name no
    /// Secret, in the namespaces `default_credentials_namespaces` allows.
    pub ambient: Option<crate::workspace::AmbientSource>,
    /// The operator-wide maximum durations and TTL after finishing.
    pub limits: deadline::Limits,
    /// Refuse deletionPolicy Orphan for a resource that holds a session with a deadline: its
    /// deletion cancels the session all the same (the cluster admin's time box holds).
    pub refuse_orphan_time_boxed: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            label_selector: None,
            streaming_lists: true,
            concurrency: 16,
            cloud_rate_limit: NonZeroU32::new(50).expect("non-zero"),
            poll_interval: Duration::from_secs(300),
            backoff: BackoffPolicy::default(),
            default_credentials: None,
            default_credentials_namespaces: None,
            default_deletion_policy: DeletionPolicy::Cancel,
            not_found_codes: Vec::new(),
            iam_endpoint: None,
            client: ClientOptions::default(),
            instance: "workspace-assist".into(),
            stuck_deleting_after: Duration::from_secs(600),
            unauthenticated_hold: Duration::from_secs(300),
            fence: crate::leader::Fence::always_open(),
            endpoints: endpoints::EndpointPolicy::default(),
            ambient: None,
            limits: deadline::Limits::default(),
            refuse_orphan_time_boxed: false,
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
    /// Per-object pacing (speed and politeness: no hot loops).
    pub gates: gate::Gates,
    /// Credentials as last read, IAM tokens, and per-credential breakers.
    pub credentials: credential_cache::CredentialCache,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    events: Arc<EventPublisher>,
    limiter: DefaultDirectRateLimiter,
    /// Confirmed cancels and own status writes the cache may not show yet (correctness).
    pub recall: recall::Recall,
    /// The credentials Secrets in use: latest version and pin, from the watch.
    pub secret_index: secret_index::SecretIndex,
    /// When each open session was last observed, and which polls are due.
    pub observations: Arc<polls::Observations>,
    /// What this process last wrote to each invitation Secret.
    pub invitations: invitation::Invitations,
    /// When held sessions reach their deadline and finished objects their TTL (speed: the
    /// times derive from status, see [`deadline`]).
    pub timers: Arc<timers::Timers>,
    /// Which resource holds each desktop, beyond what the cache shows yet (one desktop, one
    /// holder).
    pub claims: holders::Claims,
    store: OnceLock<Store<RemoteAssistance>>,
    namespaces: OnceLock<Store<PartialObjectMeta<Namespace>>>,
}

impl Context {
    /// Builds the shared context.
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Result<Context, String> {
        let cloud = WorkspaceClient::new(&config.client)?;
        let observations = Arc::new(polls::Observations::new(config.poll_interval));
        let credentials =
            credential_cache::CredentialCache::new(config.unauthenticated_hold, config.ambient.clone());
        Ok(Context {
            events: Arc::new(EventPublisher::new(
                client.clone(),
                "workspace-assist",
                &config.instance,
            )),
            limiter: RateLimiter::direct(cloud_quota(config.cloud_rate_limit)),
            client,
            cloud,
            config,
            gates: gate::Gates::default(),
            credentials,
            metrics,
            recall: recall::Recall::default(),
            secret_index: secret_index::SecretIndex::default(),
            observations,
            invitations: invitation::Invitations::default(),
            timers: Arc::default(),
            claims: holders::Claims::default(),
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
        let meta = self
            .namespace_metadata(namespace, "its deletion-policy annotation")
            .await?;
        Ok(meta.and_then(|m| {
            m.annotations
                .and_then(|mut a| a.remove(DELETION_POLICY_ANNOTATION))
        }))
    }

    /// Whether the namespace's labels let its resources use the operator's default credentials.
    pub async fn may_use_default_credentials(&self, namespace: &str) -> Result<bool, Error> {
        let Some(selector) = &self.config.default_credentials_namespaces else {
            return Ok(false);
        };
        let meta = self
            .namespace_metadata(namespace, "its labels, for the default credentials")
            .await?;
        Ok(meta.is_some_and(|m| selector.matches(&m.labels.unwrap_or_default())))
    }

    /// A namespace's metadata: from the watch of namespace metadata, or read from the API server
    /// when the watch does not hold the namespace (yet). `why` names the purpose in errors.
    async fn namespace_metadata(
        &self,
        namespace: &str,
        why: &str,
    ) -> Result<Option<kube::core::ObjectMeta>, Error> {
        if let Some(cached) = self
            .namespaces
            .get()
            .and_then(|store| store.get(&ObjectRef::new(namespace)))
        {
            return Ok(Some(cached.metadata.clone()));
        }
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_metadata_opt(namespace)
            .await
            .map_err(|e| Error::kubernetes("get", "Namespace", format!("{namespace} ({why})"), e))?;
        Ok(ns.map(|ns| ns.metadata))
    }

    /// Waits for the overall cloud rate limit.
    pub async fn rate_limit(&self) {
        self.limiter.until_ready().await;
    }

    /// Forgets the per-object state of an object that is gone (its confirmed cancel is kept for
    /// [`recall::CANCEL_MEMORY`]).
    pub fn forget(&self, uid: &str) {
        self.invitations.forget(uid);
        self.observations.forget(uid);
        self.recall.forget(uid);
        self.gates.forget(uid);
    }

    /// The Secret, from the cache when the watch says it has not changed since it was read.
    pub async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(cached) = self
            .secret_index
            .latest(&key)
            .and_then(|latest| self.credentials.at_version(&key, &latest))
        {
            return Ok(Some(cached));
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?;
        if let Some(s) = &secret {
            // A Secret in use: the index follows it from here (the watch may not have said
            // anything about it yet).
            let pinned = s.finalizers().iter().any(|f| f == SECRET_FINALIZER);
            self.secret_index
                .observe(&key, &s.resource_version().unwrap_or_default(), pinned);
        }
        self.credentials.put(key, secret.as_ref());
        Ok(secret)
    }

    /// Drops the per-object state of objects no longer in the cache (an object can go without a
    /// last reconcile: its finalizer removed by hand, or the operator's own watch missed it).
    pub fn forget_objects_gone(&self, store: &Store<RemoteAssistance>) {
        let uids: std::collections::HashSet<String> =
            store.state().iter().filter_map(|ra| ra.uid()).collect();
        self.gates.retain(|uid| uids.contains(uid));
        self.invitations.retain(|uid| uids.contains(uid));
        self.timers.retain(|uid| uids.contains(uid));
        self.claims.retain(|uid| uids.contains(uid));
    }

    /// Reconciles these resources now (through the deadline queue, due at once).
    pub fn wake(&self, objects: Vec<ObjectRef<RemoteAssistance>>) {
        let now = jiff::Timestamp::now();
        for object in objects {
            let uid = object.extra.uid.clone().unwrap_or_default();
            self.gates.forget(&uid);
            self.timers.set(&uid, object, now);
        }
    }

    /// Drops the index entries and cached credentials of Secrets no resource uses any more.
    pub fn forget_unused_secrets(&self, store: &Store<RemoteAssistance>) {
        let mut in_use: std::collections::HashSet<secret_index::SecretKey> = store
            .state()
            .iter()
            .filter_map(|ra| {
                Some((
                    ra.namespace()?,
                    ra.spec.credentials_secret_ref.as_ref()?.name.clone(),
                ))
            })
            .collect();
        in_use.extend(self.config.default_credentials.clone());
        self.secret_index.retain(|k| in_use.contains(k));
        self.credentials.retain(|k| in_use.contains(k));
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

    /// Publishes an Event in the background: a failed publish is logged, never blocks the
    /// reconcile.
    pub fn publish(
        &self,
        ra: &RemoteAssistance,
        type_: EventType,
        reason: &'static str,
        note: &str,
        action: &'static str,
    ) {
        let events = self.events.clone();
        let regarding = ra.object_ref(&());
        let note = note.to_string();
        tokio::spawn(async move {
            if let Err(e) = events
                .publish(
                    &Note {
                        type_,
                        reason,
                        note: &note,
                        action,
                    },
                    &regarding,
                )
                .await
            {
                warn!(error = %e, reason, "could not publish an Event");
            }
        });
    }

    /// The resources to reconcile when a Secret changed: those in its namespace that name it,
    /// or that use it as the default credentials. Unchanged versions (re-lists) trigger nothing.
    fn on_secret(
        self: &Arc<Self>,
        secret: &PartialObjectMeta<Secret>,
        store: &Store<RemoteAssistance>,
    ) -> Vec<ObjectRef<RemoteAssistance>> {
        let (Some(ns), Some(name)) = (secret.namespace(), secret.metadata.name.clone()) else {
            return vec![];
        };
        if secret.metadata.deletion_timestamp.is_some()
            && secret.finalizers().iter().any(|f| f == SECRET_FINALIZER)
        {
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
        let key = (ns.clone(), name.clone());
        let is_default = self.config.default_credentials.as_ref() == Some(&key);
        let users = store.state_filter(|ra| match &ra.spec.credentials_secret_ref {
            Some(r) => r.name == name && ra.namespace().as_deref() == Some(ns.as_str()),
            None => is_default,
        });
        if users.is_empty() && !is_default {
            // Not a credentials Secret in use: not indexed (the index stays as small as the
            // Secrets in use), and any credentials read from it are dropped.
            self.secret_index.forget(&key);
            self.credentials.put(key, None);
            return vec![];
        }
        let pinned = secret.finalizers().iter().any(|f| f == SECRET_FINALIZER);
        if !self
            .secret_index
            .observe(&key, &secret.resource_version().unwrap_or_default(), pinned)
        {
            return vec![];
        }
        users
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
    check_label_selector(&client, &config).await?;
    let ctx = Arc::new(Context::new(client.clone(), config, telemetry.metrics.clone())?);
    log_not_found_policy(&ctx.config);
    let streaming = ctx.config.streaming_lists && streaming_lists::supported(&scoped(&ctx)).await;
    let (resources, store, resources_relay) = watch_resources(&ctx, streaming);
    let _ = ctx.store.set(store.clone());
    let (secrets, secrets_relay) = watch_secrets(&ctx, streaming);
    let namespaces = tokio::spawn(watch_namespaces(ctx.clone()));
    let housekeeping = tokio::spawn(keep_house(ctx.clone(), store.clone(), telemetry.clone()));
    let mapper_ctx = ctx.clone();
    let polls = polls::due(ctx.observations.clone(), store.clone());
    let timers = timers::due(ctx.timers.clone());
    Controller::for_stream(resources, store.clone())
        .reconcile_on(polls)
        .reconcile_on(timers)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_stream(secrets, move |secret| mapper_ctx.on_secret(&secret, &store))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move { log_reconcile(result) })
        .await;
    for task in [housekeeping, namespaces, resources_relay, secrets_relay] {
        task.abort();
    }
    Ok(())
}

/// Which answers release a finalizer, and where credentials may go, are the operator's most
/// consequential settings: say them.
fn log_not_found_policy(config: &Config) {
    let extra: Vec<String> = config.endpoints.extra.iter().map(ToString::to_string).collect();
    info!(allowed_endpoints = ?extra, "credentials are sent only to Huawei Cloud's official Workspace and IAM endpoints and to these");
    if config.not_found_codes.is_empty() {
        info!(
            "\"nothing to cancel\" is a 404 with a Workspace (WKS.*) error body only; no extra not-found codes configured"
        );
    } else {
        info!(codes = ?config.not_found_codes, "\"nothing to cancel\" is a 404 with a Workspace error body, or one of these configured not-found codes");
    }
    let default = match (&config.ambient, &config.default_credentials) {
        (Some(source), _) => format!("the operator's own identity ({})", source.kind().as_str()),
        (None, Some((ns, name))) => format!("the Secret {ns}/{name}"),
        (None, None) => "none".to_string(),
    };
    let namespaces = config.default_credentials_namespaces.as_ref().map_or_else(
        || "no namespace".to_string(),
        |s| format!("namespaces matching {s}"),
    );
    info!(default_credentials = %default, allowed = %namespaces, "resources without spec.credentialsSecretRef use the default credentials in the allowed namespaces only");
}

/// A label selector the API server refuses would leave the watch failing forever: refused at
/// start instead, with the API server's reason.
async fn check_label_selector(client: &Client, config: &Config) -> Result<(), String> {
    let Some(selector) = &config.label_selector else {
        return Ok(());
    };
    let api: Api<RemoteAssistance> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api
        .list_metadata(&kube::api::ListParams::default().labels(selector).limit(1))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 400 => {
            Err(format!("--watch-label-selector {selector:?}: {}", s.message))
        }
        _ => {
            info!(selector = %selector, "reconciling only the RemoteAssistances whose labels match");
            Ok(())
        }
    }
}

type Relayed<T> = futures::channel::mpsc::Receiver<Result<T, watcher::Error>>;

/// The objects of a kind in the watched scope (one namespace, or all).
fn scoped<K>(ctx: &Context) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// The watch of RemoteAssistances feeding the controller's cache, driven by its own task. The
/// cache keeps only what reconciles read: managed fields and the last-applied annotation (a
/// copy of the whole object) are dropped as objects arrive.
fn watch_resources(
    ctx: &Context,
    streaming: bool,
) -> (
    Relayed<RemoteAssistance>,
    Store<RemoteAssistance>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<RemoteAssistance> = scoped(ctx);
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.config.label_selector {
        config = config.labels(selector);
    }
    let resources = watch_with(api, config, streaming, "RemoteAssistance")
        .modify(|ra: &mut RemoteAssistance| {
            ra.managed_fields_mut().clear();
            ra.annotations_mut()
                .remove("kubectl.kubernetes.io/last-applied-configuration");
        })
        .reflect(writer);
    let (stream, task) = relay(
        triggers::applied_after_lists(resources, store.clone()),
        "RemoteAssistance",
    );
    (stream, store, task)
}

/// The watch of Secrets, which only triggers reconciles: their metadata (name, resourceVersion,
/// finalizers) is enough. Invitation Secrets (one per resource, written by the operator) are
/// left out.
fn watch_secrets(
    ctx: &Context,
    streaming: bool,
) -> (Relayed<PartialObjectMeta<Secret>>, tokio::task::JoinHandle<()>) {
    let api: Api<PartialObjectMeta<Secret>> = scoped(ctx);
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&format!("!{}", invitation::INVITATION_LABEL));
    relay(
        watch_with(api, config, streaming, "Secret").touched_objects(),
        "Secret",
    )
}

/// A watcher with the operator's backoff, starting with a streaming list when `streaming`
/// (falling back to a plain list if it stalls, see [`streaming_lists::with_stall_fallback`]).
fn watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    streaming: bool,
    what: &'static str,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    streaming_lists::with_stall_fallback(streaming, what, move |streaming| {
        watcher(
            api.clone(),
            streaming_lists::initial_list(config.clone(), streaming),
        )
        .backoff(watch_backoff())
        .boxed()
    })
}

/// Logs the outcome of a reconcile: passing cloud failures at info, the rest at warn.
fn log_reconcile(
    result: Result<
        (ObjectRef<RemoteAssistance>, kube::runtime::controller::Action),
        controller::Error<reconcile::Failure, watcher::Error>,
    >,
) {
    match result {
        Ok((object, _)) => debug!(%object, "reconciled"),
        Err(controller::Error::ReconcilerFailed(failure, object)) => {
            let retry_after_ms = failure.retry_after.as_millis() as u64;
            let reason = failure.error.reason();
            let request_id = failure
                .error
                .cloud_error()
                .and_then(|e| e.request_id())
                .unwrap_or_default()
                .to_string();
            if matches!(failure.error, Error::Cloud { .. }) && !failure.error.needs_human() {
                info!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed; retrying with backoff");
            } else {
                warn!(%object, error = %failure, reason, request_id, retry_after_ms, "reconcile failed");
            }
        }
        Err(controller::Error::ObjectNotFound(_)) => {}
        Err(e) => warn!(error = %e, "controller"),
    }
}

/// The cloud call quota: `per_second` calls spaced evenly, no burst, so that no one-second
/// window (as the cloud's gateway counts) ever holds more than `per_second` calls. (A burst the
/// size of the rate would allow nearly twice the rate in the second after a quiet spell.)
fn cloud_quota(per_second: NonZeroU32) -> Quota {
    Quota::with_period(Duration::from_secs(1) / per_second.get())
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::MIN)
}

/// Runs a watch (with its backoff) in a task of its own and hands its objects on; its errors
/// are logged there. The controller merges its trigger streams and does not always poll one
/// that is backing off: a watch driven by the controller can stay down for tens of seconds
/// after the API server is back. Driven by its own task, it retries on its own schedule.
fn relay<T: Send + 'static>(
    watch: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> (Relayed<T>, tokio::task::JoinHandle<()>) {
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
    let labels = std::sync::Mutex::new(std::collections::HashMap::<
        String,
        std::collections::BTreeMap<String, String>,
    >::new());
    watcher(api, config.any_semantic())
        .backoff(watch_backoff())
        .modify(|ns: &mut PartialObjectMeta<Namespace>| ns.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => {
                    let now = ns.labels().clone();
                    let before = labels
                        .lock()
                        .expect("namespace labels")
                        .insert(ns.name_any(), now.clone());
                    if before.is_some_and(|b| b != now) {
                        redrive_namespace(&ctx, &ns.name_any());
                    }
                }
                Ok(watcher::Event::Delete(ns)) => {
                    labels.lock().expect("namespace labels").remove(&ns.name_any());
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "namespace watch"),
            }
            async {}
        })
        .await;
}

/// A namespace's labels changed: which credentials its resources may use may have changed
/// with them (`--default-credentials-namespaces`), so its resources are reconciled at once,
/// not at their next slow recheck.
fn redrive_namespace(ctx: &Context, namespace: &str) {
    let Some(store) = ctx.store() else { return };
    let objects: Vec<ObjectRef<RemoteAssistance>> = store
        .state()
        .iter()
        .filter(|ra| ra.namespace().as_deref() == Some(namespace))
        .map(|ra| ObjectRef::from_obj(&**ra))
        .collect();
    if !objects.is_empty() {
        info!(
            namespace,
            resources = objects.len(),
            "the namespace's labels changed: reconciling its resources"
        );
        ctx.wake(objects);
    }
}

/// Marks the instance ready once the cache is synced; then, every 5 s, keeps the per-phase
/// gauges current, and every minute drops what is kept for Secrets no resource uses any more
/// and hands free heap pages back.
async fn keep_house(ctx: Arc<Context>, store: Store<RemoteAssistance>, telemetry: Telemetry) {
    // Asked again every second: the store's readiness is a oneshot channel that wakes only the
    // last of several waiters (the controller waits on it too), so a single wait can sleep on.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => {
                telemetry
                    .health
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    for round in 0u64.. {
        if round % 12 == 0 {
            ctx.forget_unused_secrets(&store);
            ctx.forget_objects_gone(&store);
        }
        // Every 30 s (and once the cache is built), free heap pages go back to the system.
        if round % 6 == 0 {
            crate::memory::release_free_memory();
        }
        report_resources(&store, &telemetry, ctx.config.stuck_deleting_after);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Sets the per-phase gauges and the count of resources stuck deleting.
fn report_resources(store: &Store<RemoteAssistance>, telemetry: &Telemetry, stuck_after: Duration) {
    const PHASES: [&str; 6] = ["Pending", "Active", "Cancelling", "Cancelled", "Closed", "Failed"];
    let now = jiff::Timestamp::now();
    let mut counts: Vec<(&'static str, i64)> = PHASES.iter().map(|p| (*p, 0)).collect();
    let mut stuck = 0;
    let mut past_deadline = 0;
    for ra in store.state() {
        let expired = ra
            .status
            .as_ref()
            .and_then(|s| s.expires_at.as_ref())
            .is_some_and(|t| t.0 <= now);
        if expired && deadline::holds_session(&ra) {
            past_deadline += 1;
        }
        if let Some(phase) = ra.status.as_ref().and_then(|s| s.phase) {
            let name = format!("{phase:?}");
            if let Some(c) = counts.iter_mut().find(|(p, _)| *p == name) {
                c.1 += 1;
            }
        }
        if ra
            .metadata
            .deletion_timestamp
            .as_ref()
            .is_some_and(|d| now.duration_since(d.0).unsigned_abs() > stuck_after)
        {
            stuck += 1;
        }
    }
    telemetry.metrics.set_resources(&counts, stuck, past_deadline);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_one_second_window_exceeds_the_cloud_rate_limit() {
        use governor::clock::{Clock, FakeRelativeClock};
        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::direct_with_clock(cloud_quota(NonZeroU32::new(50).unwrap()), clock.clone());
        // As many calls as the limiter lets through, each as early as it allows, over 3 s.
        let mut admitted = Vec::new();
        while clock.now().as_u64() < 3_000_000_000 {
            if limiter.check().is_ok() {
                admitted.push(clock.now().as_u64());
            } else {
                clock.advance(Duration::from_micros(100));
            }
        }
        let busiest = admitted
            .iter()
            .map(|t| {
                admitted
                    .iter()
                    .filter(|u| **u >= *t && **u < *t + 1_000_000_000)
                    .count()
            })
            .max()
            .unwrap();
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
