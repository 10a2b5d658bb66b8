//! What every reconcile shares: the settings ([`Config`]) and the [`Context`] (clients, caches,
//! pacing, per-object state). Every group of the controller uses these, so they sit below the
//! groups rather than in `mod.rs`.
//!
//! Per-object state (by UID) lives in small stores, each implementing [`PerObjectStore`], all
//! listed once in `Context::per_object_stores`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::RateLimiter;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use super::credentials::pins::PinReleases;
use super::credentials::secret::{self, CredentialsError, SecretCredentials};
use super::credentials::{agencies, cache as credential_cache, endpoints, index as secret_index, selector};
use super::error::{Error, Result, StartError};
use super::pacing::cloud_calls::cloud_quota;
use super::pacing::fair::{Claimant, CloudBudget, Slots, Urgency};
use super::pacing::gate::{self, BackoffPolicy};
use super::pacing::{polls, timers};
use super::reconcile::{deadline, holders, invitation, recall};
use super::report::events::{EventPublisher, EventType, Note};
use crate::agency_binding::AgencyBinding;
use crate::resource::{DELETION_POLICY_ANNOTATION, DeletionPolicy, RemoteAssistance, SECRET_FINALIZER};
use crate::telemetry::Metrics;
use crate::workspace::{ClientOptions, Credentials, WorkspaceClient};

/// A store of what the operator keeps per RemoteAssistance, by UID, outside the object itself
/// (linkerd's index `apply`/`delete`/`reset` is the model): pacing, polls, timers, memory of
/// its own writes, invitations written, desktop claims.
pub(crate) trait PerObjectStore {
    /// The object is gone after its last reconcile: drop what is kept for it.
    fn forget(&self, uid: &str);
    /// Keeps only the entries of objects for which `exists` holds: an object can go without a
    /// last reconcile (its finalizer removed by hand, the watch missed its deletion).
    fn retain(&self, exists: &dyn Fn(&str) -> bool);
}

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
    pub unauthenticated_pause: Duration,
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
    /// Watch AgencyBindings (cluster-scoped: needs a ClusterRole) and let resources in the
    /// namespaces they select reach other accounts through their agencies.
    pub agency_bindings: bool,
    /// Only the AgencyBindings whose labels match this selector (several operators in one
    /// cluster, each with bindings of its own); None: all.
    pub agency_binding_selector: Option<String>,
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
            unauthenticated_pause: Duration::from_secs(300),
            fence: crate::leader::Fence::always_open(),
            endpoints: endpoints::EndpointPolicy::default(),
            ambient: None,
            limits: deadline::Limits::default(),
            refuse_orphan_time_boxed: false,
            agency_bindings: false,
            agency_binding_selector: None,
        }
    }
}

/// Which of the operator's own credentials sign an agency's request.
#[derive(Clone)]
enum OwnIdentity {
    /// Its ambient source.
    Ambient,
    /// Its default Secret's AK/SK or token.
    Direct(Credentials),
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
    pub(crate) events: Arc<EventPublisher>,
    /// The overall cloud budget, handed out access-ending calls first, namespaces in turn.
    budget: CloudBudget,
    /// The reconcile slots (`concurrency`), handed out in the same order.
    pub(crate) slots: Arc<Slots>,
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
    /// Pinned Secrets being deleted, for the task that releases them once unused
    /// ([`pins::release_pins_when_unused`]).
    pub(crate) pin_releases: PinReleases,
    pub(crate) store: OnceLock<Store<RemoteAssistance>>,
    pub(crate) namespaces: OnceLock<Store<PartialObjectMeta<Namespace>>>,
    /// The AgencyBindings, from their watch (unset without `agency_bindings`).
    pub(crate) bindings: OnceLock<Store<AgencyBinding>>,
    /// The temporary credentials of the agencies in use, one fetch per binding.
    pub agencies: agencies::Agencies,
    /// Counts agency fetches (each outcome): the bindings' loop writes their status again on
    /// each, so that a failed fetch shows on the binding at once.
    pub(crate) agency_fetches: tokio::sync::watch::Sender<u64>,
}

impl Context {
    /// Builds the shared context.
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Result<Context, StartError> {
        let cloud = WorkspaceClient::new(&config.client)?;
        let observations = Arc::new(polls::Observations::new(config.poll_interval));
        let credentials =
            credential_cache::CredentialCache::new(config.unauthenticated_pause, config.ambient.clone());
        Ok(Context {
            events: Arc::new(EventPublisher::new(
                client.clone(),
                "workspace-assist",
                &config.instance,
            )),
            budget: CloudBudget::new(RateLimiter::direct(cloud_quota(config.cloud_rate_limit))),
            slots: Slots::new(match config.concurrency {
                0 => usize::MAX,
                n => usize::from(n),
            }),
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
            pin_releases: PinReleases::default(),
            store: OnceLock::new(),
            namespaces: OnceLock::new(),
            bindings: OnceLock::new(),
            agencies: agencies::Agencies::default(),
            agency_fetches: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The AgencyBindings, once their watch has listed them (empty without `agency_bindings`).
    pub async fn agency_bindings(&self) -> Vec<Arc<AgencyBinding>> {
        let Some(store) = self.bindings.get() else {
            return Vec::new();
        };
        // A held session's binding must be found at start-up too, not reported missing.
        let _ = tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await;
        store.state()
    }

    /// The AgencyBinding `name`, if it exists.
    pub async fn agency_binding(&self, name: &str) -> Result<Arc<AgencyBinding>> {
        if !self.config.agency_bindings {
            return Err(agencies::AgencyBindingError::Disabled(name.to_string()).into());
        }
        self.agency_bindings()
            .await
            .into_iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| agencies::AgencyBindingError::NotFound(name.to_string()).into())
    }

    /// A namespace's labels (for the selectors of the default credentials and of bindings).
    pub async fn namespace_labels(&self, namespace: &str, why: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .namespace_metadata(namespace, why)
            .await?
            .and_then(|m| m.labels)
            .unwrap_or_default())
    }

    /// The binding's temporary credentials: shared by every resource that uses it, fetched with
    /// the operator's own identity (its ambient source, else its default Secret's AK/SK or
    /// token).
    pub async fn agency_credentials(&self, binding: &AgencyBinding) -> Result<Credentials> {
        let name = binding.metadata.name.clone().unwrap_or_default();
        let request = agencies::request_for(binding, self.config.iam_endpoint.as_ref());
        let own = self.own_identity(&name).await?;
        // `refused`: IAM refused these temporary credentials with a 401; fetch new ones.
        let caller = |refused: Option<String>| {
            let own = own.clone();
            async move {
                match (own, &self.credentials.ambient) {
                    (OwnIdentity::Ambient, Some(ambient)) => {
                        if let Some(access_key_id) = &refused {
                            ambient.expired(access_key_id);
                        }
                        ambient.credentials(self.cloud.http()).await
                    }
                    (OwnIdentity::Direct(c), _) => Ok(c),
                    (OwnIdentity::Ambient, None) => unreachable!("chosen because it is set"),
                }
            }
        };
        self.agencies
            .credentials(self.cloud.http(), &name, request, caller, |ok| {
                self.metrics.agency_fetched(&name, ok);
                self.agency_fetches.send_modify(|n| *n += 1);
            })
            .await
            .map_err(Error::CredentialsSource)
    }

    /// The operator's own identity, to assume an agency with.
    async fn own_identity(&self, binding: &str) -> Result<OwnIdentity> {
        if self.credentials.ambient.is_some() {
            return Ok(OwnIdentity::Ambient);
        }
        let Some((namespace, name)) = &self.config.default_credentials else {
            return Err(agencies::AgencyBindingError::NoOwnIdentity(binding.to_string()).into());
        };
        let secret = self
            .secret(namespace, name)
            .await
            .map_err(|e| {
                Error::kubernetes(
                    "get",
                    "Secret",
                    format!("{namespace}/{name} (the operator's own credentials, for an agency)"),
                    e,
                )
            })?
            .ok_or_else(|| CredentialsError::SecretNotFound(name.clone()))?;
        match secret::from_secret(&secret)? {
            SecretCredentials::Direct(c) => Ok(OwnIdentity::Direct(c)),
            SecretCredentials::Password { .. } => {
                Err(agencies::AgencyBindingError::PasswordIdentity(binding.to_string()).into())
            }
        }
    }

    /// The controller's cache of RemoteAssistances (set when the controller starts).
    pub fn store(&self) -> Option<&Store<RemoteAssistance>> {
        self.store.get()
    }

    /// The namespace's deletion-policy annotation: from the watch of namespace metadata, or
    /// read from the API server when the watch does not hold the namespace (yet).
    pub async fn namespace_deletion_policy(&self, namespace: &str) -> Result<Option<String>> {
        let meta = self
            .namespace_metadata(namespace, "its deletion-policy annotation")
            .await?;
        Ok(meta.and_then(|m| {
            m.annotations
                .and_then(|mut a| a.remove(DELETION_POLICY_ANNOTATION))
        }))
    }

    /// Whether the namespace's labels let its resources use the operator's default credentials.
    pub async fn may_use_default_credentials(&self, namespace: &str) -> Result<bool> {
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
    async fn namespace_metadata(&self, namespace: &str, why: &str) -> Result<Option<kube::core::ObjectMeta>> {
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

    /// Asks the task that releases pins to release this Secret's once no resource needs it.
    pub fn release_pin_when_unused(&self, namespace: String, name: String) {
        self.pin_releases.send((namespace, name));
    }

    /// How many wait for a reconcile slot and for the cloud budget, for the metrics.
    pub fn report_waiting(&self) {
        let (ends_access, routine) = self.slots.waiting();
        self.metrics.set_waiting("slots", ends_access, routine);
        let (ends_access, routine) = self.budget.waiting();
        self.metrics.set_waiting("cloud_budget", ends_access, routine);
    }

    /// Waits for `claimant`'s turn in the overall cloud rate limit.
    pub async fn rate_limit(&self, claimant: &Claimant) {
        let started = std::time::Instant::now();
        self.budget.take(claimant).await;
        self.metrics.waited(
            "cloud_budget",
            claimant.urgency == Urgency::EndsAccess,
            started.elapsed(),
        );
    }

    /// Every store of per-object state, once: the one list [`Context::forget`] and
    /// [`Context::forget_objects_gone`] clean up (a new store is added here and nowhere else).
    fn per_object_stores(&self) -> [&dyn PerObjectStore; 6] {
        [
            &self.gates,
            &*self.observations,
            &*self.timers,
            &self.recall,
            &self.invitations,
            &self.claims,
        ]
    }

    /// Forgets the per-object state of an object that is gone after its last reconcile (a
    /// store may keep a short memory on purpose: a confirmed cancel, for
    /// [`recall::CANCEL_MEMORY`]).
    pub fn forget(&self, uid: &str) {
        for store in self.per_object_stores() {
            store.forget(uid);
        }
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
        match &secret {
            // A Secret in use: the index follows it from here (the watch may not have said
            // anything about it yet).
            Some(s) => {
                let pinned = s.finalizers().iter().any(|f| f == SECRET_FINALIZER);
                self.secret_index
                    .observe(&key, &s.resource_version().unwrap_or_default(), pinned);
            }
            // Named but missing: its creation must re-drive the resources waiting for it.
            None => self.secret_index.awaited(&key),
        }
        self.credentials.put(key, secret.as_ref());
        Ok(secret)
    }

    /// Drops the per-object state of objects no longer in the cache (an object can go without a
    /// last reconcile: its finalizer removed by hand, or the operator's own watch missed it).
    pub fn forget_objects_gone(&self, store: &Store<RemoteAssistance>) {
        let uids: std::collections::HashSet<String> =
            store.state().iter().filter_map(|ra| ra.uid()).collect();
        for per_object in self.per_object_stores() {
            per_object.retain(&|uid| uids.contains(uid));
        }
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
}
